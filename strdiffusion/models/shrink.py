"""Shrink a trained checkpoint for shipping: the same network with its weights stored as float16.

Training, resuming and sampling stay in float32: loading upcasts the stored weights
(``load_state_dict`` copies into the float32 network), so the only change is the rounding of each
weight to float16 (a relative error of at most 2**-11 above 6e-5, float16's smallest normal
number). The copy keeps all metadata and adds ``stored_dtype`` and ``source_sha256`` (the float32
file it came from), so its provenance stays traceable. Weights outside float16's range are refused, naming the tensor.

    strdiffusion shrink results/laptop/irsde.pt checkpoints/laptop/irsde.pt
"""
from __future__ import annotations

from pathlib import Path

import torch

from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path, sha256_of
from strdiffusion.models.checkpoints import FORMAT, load_checkpoint

_HALF_MAX = float(torch.finfo(torch.float16).max)


def shrink(src, dst) -> dict:
    """Write ``src`` (a strdiffusion checkpoint) to ``dst`` with float16 weights; returns the new metadata
    (without the state dict). ``dst`` appears whole or not at all."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise UserError(f"shrink would overwrite its source {src}; give another output path")
    # a readable checkpoint of ours that fits its network (strict load), or a one-line UserError
    net, meta = load_checkpoint(src)
    if meta["format"] != FORMAT:
        raise UserError(f"checkpoint {src} is a bare state dict; shrink needs a strdiffusion checkpoint "
                        "(one written by `strdiffusion train`)")
    if meta.get("stored_dtype") == "float16":
        raise UserError(f"checkpoint {src} is already stored as float16 (from {meta.get('source_sha256')})")
    state_dict = {}
    for name, tensor in net.state_dict().items():  # the file's tensors: the load above was strict
        if tensor.is_floating_point():
            worst = tensor.abs().max().item() if tensor.numel() else 0.0
            if not worst <= _HALF_MAX:  # also catches NaN
                raise UserError(f"checkpoint {src}: tensor {name} holds {worst:g}, outside float16's range "
                                f"(±{_HALF_MAX:g}); ship it as float32")
            tensor = tensor.to(torch.float16)
        state_dict[name] = tensor
    meta = {k: v for k, v in meta.items() if k != "path"}
    meta.update(stored_dtype="float16", source_sha256=sha256_of(src))
    with atomic_path(dst) as tmp:
        torch.save({**meta, "state_dict": state_dict}, tmp)
    return meta
