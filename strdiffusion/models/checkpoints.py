"""Saving and loading network checkpoints: ours, and the authors' bare state dicts.

Our format is one ``torch.save``d dict::

    {"format": "strdiffusion-checkpoint", "version": 1, "kind": "texture",
     "ctor_kwargs": {...}, "sde": {"T", "max_sigma", "schedule", "eps"} or None,
     "package_version": "...", <extra metadata: "iteration", "structure_sigma", ...>,
     "state_dict": {name: tensor}}

Loading always uses ``torch.load(weights_only=True)`` (files with pickled code are refused) and
``load_state_dict(strict=True)``: every key and shape must match, or a :class:`UserError` names
them. The authors' released checkpoints are bare state dicts (no settings inside); loading one
needs the network settings (defaults: the paper's nf 64, depth 4) and the SDE settings (``sde.T``
at least) from the config, because a T mismatch silently ruins the samples.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from strdiffusion import __version__
from strdiffusion.core.nets import ConditionalUNet, Critic
from strdiffusion.core.sde import IRSDE
from strdiffusion.io.errors import UserError
from strdiffusion.io.files import atomic_path
from strdiffusion.settings.jobs import ModelSettings
from strdiffusion.settings.methods import NETWORKS as NET_KINDS

FORMAT = "strdiffusion-checkpoint"
VERSION = 1

_PAPER = ModelSettings()
_DEFAULTS = {
    "structure": {"in_nc": 1, "out_nc": 1, "nf": _PAPER.nf, "depth": _PAPER.depth, "guidance": False},
    "texture": {"in_nc": 3, "out_nc": 3, "nf": _PAPER.nf, "depth": _PAPER.depth, "guidance": True},
    "irsde": {"in_nc": 3, "out_nc": 3, "nf": _PAPER.nf, "depth": _PAPER.depth, "guidance": False},
    "critic": {"nc": 4, "ngf": _PAPER.critic_ngf, "t_emb_dim": 256},
}
# Where a setting lives in config/config.yaml, for error messages.
_CONFIG_KEY = {"nf": "model.nf", "depth": "model.depth", "ngf": "model.critic_ngf"}
_RESERVED = ("format", "version", "kind", "ctor_kwargs", "sde", "package_version", "state_dict")
_SDE_KEYS = ("T", "max_sigma", "schedule", "eps")
_LIST_LIMIT = 5


def default_ctor_kwargs(kind: str) -> dict:
    """Constructor settings of the paper's network of this kind (nf 64, depth 4; critic ngf 64)."""
    _check_kind(kind)
    return dict(_DEFAULTS[kind])


def network_kwargs(kind: str, model: ModelSettings) -> dict:
    """Constructor arguments of a network of ``kind`` at ``model``'s size: the one place they are built (training,
    the cost plan). The paper's attention (the ModelSettings defaults) stays implicit: the arguments name attention
    only where it departs from the paper, so every checkpoint of the paper's networks records the same arguments."""
    kwargs = default_ctor_kwargs(kind)
    if kind == "critic":
        kwargs["ngf"] = model.critic_ngf
    else:
        kwargs.update(nf=model.nf, depth=model.depth)
        paper = ModelSettings()
        if (model.attn_heads, model.attn_dim_head) != (paper.attn_heads, paper.attn_dim_head):
            kwargs.update(attn_heads=model.attn_heads, attn_dim_head=model.attn_dim_head)
    return kwargs


def build_network(kind: str, **ctor_kwargs) -> nn.Module:
    """A freshly initialised network of ``kind``; ``ctor_kwargs`` override the paper defaults."""
    kwargs = _resolve_ctor_kwargs(kind, ctor_kwargs)
    cls = Critic if kind == "critic" else ConditionalUNet
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"invalid settings for a {kind} network {kwargs}: {exc}") from None


def save_checkpoint(path, net: nn.Module, kind: str, ctor_kwargs: dict, sde, extra: dict | None = None) -> None:
    """Write ``net``'s weights and settings to ``path`` atomically.

    ``ctor_kwargs`` are the settings ``net`` was built with (as given to :func:`build_network`);
    ``sde`` is the IRSDE it was trained with (or its ``settings()`` dict, or None for none);
    ``extra`` adds top-level metadata such as ``iteration`` or ``structure_sigma`` (plain python
    values or tensors only, so that the file loads with ``weights_only``).
    """
    kwargs = _resolve_ctor_kwargs(kind, ctor_kwargs)
    net = _unwrap(net)
    state_dict = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with torch.device("meta"):
        expected = build_network(kind, **kwargs).state_dict()
    problems = _state_dict_problems(expected, state_dict)
    if problems:
        raise ValueError(f"the network does not match ctor_kwargs {kwargs}: {problems}")

    if isinstance(sde, IRSDE):
        sde = sde.settings()
    elif sde is not None:
        missing = [k for k in _SDE_KEYS if k not in sde]
        if missing:
            raise ValueError(f"sde settings lack {missing}")
        sde = {k: sde[k] for k in _SDE_KEYS}
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "ctor_kwargs": kwargs, "sde": sde,
               "package_version": __version__}
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra metadata may not override {key!r}")
        _check_plain(key, value)
        payload[key] = value
    payload["state_dict"] = state_dict
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, kind: str | None = None, expect_sde: dict | None = None,
                    ctor_kwargs: dict | None = None, map_location="cpu") -> tuple[nn.Module, dict]:
    """Build the network stored in ``path`` and load its weights strictly; returns (net, metadata).

    Args:
        kind: the network kind expected (one of NET_KINDS); None accepts what the file holds
            (a bare state dict's kind is then recognised from its keys).
        expect_sde: the SDE settings of the config ({"T", ...} or an IRSDE). Each one given must
            equal the checkpoint's; required (at least T) for a bare state dict.
        ctor_kwargs: network settings of the config. For our format each one given must equal the
            stored one; for a bare state dict they override the paper defaults.
        map_location: device to put the network on.
    Returns:
        The network in eval mode on ``map_location`` and the metadata (everything but the state
        dict, plus "path"; for a bare state dict "format" is "state_dict").
    Raises:
        UserError naming the file and the offending keys, shapes or settings.
    """
    path = Path(path)
    if kind is not None:
        _check_kind(kind)
    if isinstance(expect_sde, IRSDE):
        expect_sde = expect_sde.settings()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure here means the file is not one we can read safely
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: {reason}); "
                        "it must be a PyTorch state dict or a strdiffusion checkpoint "
                        "(files that need to run pickled code are refused)") from None

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        net, meta = _from_ours(path, obj, kind, expect_sde, ctor_kwargs)
    elif _is_state_dict(obj):
        net, meta = _from_bare(path, obj, kind, expect_sde, ctor_kwargs)
    else:
        what = type(obj).__name__
        if isinstance(obj, dict):
            what = f"dict with keys {_preview(sorted(map(str, obj)))}"
        raise UserError(f"checkpoint {path} is neither a strdiffusion checkpoint nor a state dict "
                        f"(found a {what})")
    net.eval()
    if map_location is not None:
        net.to(map_location)
    meta["path"] = str(path)
    return net, meta


# ---------------------------------------------------------------------- internals

def _check_kind(kind) -> None:
    if kind not in NET_KINDS:
        raise UserError(f"unknown network kind {kind!r}; expected one of {', '.join(NET_KINDS)}")


def _resolve_ctor_kwargs(kind: str, ctor_kwargs: dict | None) -> dict:
    _check_kind(kind)
    kwargs = {**_DEFAULTS[kind], **(ctor_kwargs or {})}
    if "guidance" in _DEFAULTS[kind] and kwargs["guidance"] != _DEFAULTS[kind]["guidance"]:
        raise UserError(f"a {kind} network has guidance={_DEFAULTS[kind]['guidance']}; "
                        f"got guidance={kwargs['guidance']}")
    if isinstance(kwargs.get("ch_mult"), list | tuple):
        kwargs["ch_mult"] = [int(m) for m in kwargs["ch_mult"]]
    return kwargs


def _unwrap(net: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(net, "_orig_mod"):
            net = net._orig_mod
        elif isinstance(net, nn.DataParallel | nn.parallel.DistributedDataParallel):
            net = net.module
        else:
            return net


def _check_plain(key, value) -> None:
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for v in value:
            _check_plain(key, v)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(key, k)
            _check_plain(key, v)
        return
    raise TypeError(f"extra metadata {key!r} holds a {type(value).__name__}; use plain python values or tensors")


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _preview(names) -> str:
    names = list(names)
    shown = ", ".join(str(n) for n in names[:_LIST_LIMIT])
    return f"{shown} (and {len(names) - _LIST_LIMIT} more; {len(names)} in all)" if len(names) > _LIST_LIMIT else shown


def _state_dict_problems(expected: dict, got: dict) -> str:
    """'' if names and shapes agree, else a one-line description of every difference."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong_shape = [f"{k} {tuple(got[k].shape)} in the file vs {tuple(expected[k].shape)} in the network"
                   for k in expected if k in got and got[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_preview(unexpected)}")
    if wrong_shape:
        parts.append(f"shape mismatches: {_preview(wrong_shape)}")
    return "; ".join(parts)


def _load_strict(path: Path, net: nn.Module, state_dict: dict, hint: str) -> None:
    problems = _state_dict_problems(net.state_dict(), state_dict)
    if problems:
        raise UserError(f"checkpoint {path} does not fit the network: {problems}{hint}")
    net.load_state_dict(state_dict, strict=True)


def _same(a, b) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def sde_mismatch(a: dict, b: dict) -> str | None:
    """The first SDE setting (T, max_sigma, schedule, eps) that ``a`` and ``b`` both give with different
    values, else None. Numbers agree to a relative 1e-9; a setting missing on either side is not compared."""
    return next((key for key in _SDE_KEYS if key in a and key in b and not _same(a[key], b[key])), None)


def _check_sde(path: Path, stored: dict | None, expected: dict | None) -> None:
    if stored is None or not expected:
        return
    key = sde_mismatch(stored, expected)
    if key is not None:
        raise UserError(f"checkpoint {path} was trained with {key}={stored[key]} but config says "
                        f"{key}={expected[key]} (key sde.{key})")


def _from_ours(path, payload, kind, expect_sde, ctor_kwargs):
    if payload.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has format version {payload.get('version')}; this strdiffusion "
                        f"reads version {VERSION}")
    stored_kind = payload.get("kind")
    if stored_kind not in NET_KINDS:
        raise UserError(f"checkpoint {path} names an unknown network kind {stored_kind!r}")
    if kind is not None and stored_kind != kind:
        raise UserError(f"checkpoint {path} holds a {stored_kind} network, but a {kind} network was asked for")
    stored_kwargs = payload.get("ctor_kwargs") or {}
    for key, value in (ctor_kwargs or {}).items():
        if key in stored_kwargs and not _same(stored_kwargs[key], value):
            config_key = _CONFIG_KEY.get(key, f"model.{key}")
            raise UserError(f"checkpoint {path} has {key}={stored_kwargs[key]} but config says {key}={value} "
                            f"(key {config_key})")
    _check_sde(path, payload.get("sde"), expect_sde)
    state_dict = payload.get("state_dict")
    if not _is_state_dict(state_dict):
        raise UserError(f"checkpoint {path} has no state dict")
    net = build_network(stored_kind, **stored_kwargs)
    _load_strict(path, net, state_dict, "")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return net, meta


def _infer_kind(state_dict: dict) -> str | None:
    if "t_embed.main.0.weight" in state_dict:
        return "critic"
    if any(".4.conv_0.weight_orig" in k for k in state_dict):
        return "texture"
    init = state_dict.get("init_conv.weight")
    if init is not None and init.dim() == 4:
        return {2: "structure", 6: "irsde"}.get(init.shape[1])
    return None


def _from_bare(path, state_dict, kind, expect_sde, ctor_kwargs):
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if kind is None:
        kind = _infer_kind(state_dict)
        if kind is None:
            raise UserError(f"checkpoint {path} is a bare state dict of an unrecognised network; "
                            f"say which kind it is ({', '.join(NET_KINDS)})")
    if not expect_sde or "T" not in expect_sde:
        raise UserError(f"checkpoint {path} is a bare state dict without training settings: set sde.T "
                        "(and sde.max_sigma, sde.schedule, sde.eps) in the config to the values it was "
                        "trained with (the authors' Places2 models use T=400, Paris StreetView T=100)")
    kwargs = _resolve_ctor_kwargs(kind, ctor_kwargs)
    net = build_network(kind, **kwargs)
    size_keys = ["model.critic_ngf"] if kind == "critic" else ["model.nf", "model.depth"]
    hint = f" (built as a {kind} network with {kwargs}; check {' and '.join(size_keys)} in the config)"
    _load_strict(path, net, state_dict, hint)
    sde = {k: expect_sde[k] for k in _SDE_KEYS if k in expect_sde}
    meta = {"format": "state_dict", "kind": kind, "ctor_kwargs": kwargs, "sde": sde}
    return net, meta
