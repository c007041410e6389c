"""The diffusion methods of the inpaint stage: networks from checkpoints, device, padding, uint8 in and out.

:class:`DiffusionRunner` loads the networks a method needs (strictly, checking the SDE they were
trained with), picks the device, pads images to the networks' multiple and calls the pure sampler
(:mod:`strdiffusion.core.sampling`). It reads checkpoint files but no images: the inpaint stage
(:mod:`strdiffusion.inpainting.run`) reads and writes those and builds the settings from its options.

Conventions: images are uint8 HxWx3 arrays; masks float HxW arrays with 1 = KNOWN pixel.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from strdiffusion.core.constants import SamplerConfig
from strdiffusion.core.sampling import as_noise_fn, make_generators, net_callables, sample_irsde, sample_strdiffusion
from strdiffusion.core.sde import IRSDE
from strdiffusion.io.errors import UserError
from strdiffusion.runtime.gpu import resolve_device
from strdiffusion.runtime.precision import configure
from strdiffusion.settings.jobs import RunSettings
from strdiffusion.settings.methods import method_networks

log = logging.getLogger("strdiffusion.inpainting.run")

# the critic halves the resolution three times
_CRITIC_MULTIPLE = 8


def load_method_networks(method: str, checkpoints: dict, run: RunSettings, device,
                         metadata: dict | None = None) -> tuple[dict, IRSDE]:
    """Load the networks ``method`` needs (strictly) from ``checkpoints`` (kind -> path) and their SDE.

    ``metadata``, when given, receives each network's checkpoint metadata (kind -> dict).

    ``run.T`` is checked against every checkpoint's stored settings; all networks must agree. The
    authors' bare state dicts carry no settings: then ``run.T`` is required and the other SDE
    settings are IRSDE's defaults (:class:`strdiffusion.core.constants.SDEConfig`), the reference's.
    """
    from strdiffusion.models.checkpoints import load_checkpoint, sde_mismatch

    expect = {"T": int(run.T)} if run.T is not None else None
    nets, sde_settings, sde_from = {}, None, None
    for kind in method_networks(method):
        path = Path(checkpoints[kind])
        net, meta = load_checkpoint(path, kind=kind, expect_sde=expect, map_location=device)
        if metadata is not None:
            metadata[kind] = meta
        stored = meta.get("sde")
        if stored:
            if sde_settings is None:
                sde_settings, sde_from = dict(stored), path
            elif sde_mismatch(sde_settings, stored) is not None:
                raise UserError(f"checkpoints disagree on the SDE: {sde_from} has {sde_settings}, {path} has {stored}; "
                                "use networks trained with the same sde settings")
        nets[kind] = net
    # settings a checkpoint does not store are IRSDE's defaults, the reference's
    sde = IRSDE(**(sde_settings or ({"T": int(run.T)} if expect else {})), device=device)
    from strdiffusion.core.nets.spade import bake_spectral_norm

    for kind, net in nets.items():
        net.requires_grad_(False)
        if kind == "texture":
            bake_spectral_norm(net)  # same weights, without the per-forward normalisation
        if run.channels_last:
            net.to(memory_format=torch.channels_last)
        if run.compile:
            nets[kind] = torch.compile(net, dynamic=True)
    return nets, sde


def pad_multiple(nets: dict) -> int:
    """Side lengths the networks need: the UNets' padding multiple and the critic's 8."""
    multiple = 1
    for kind, net in nets.items():
        net = getattr(net, "_orig_mod", net)
        need = _CRITIC_MULTIPLE if kind == "critic" else int(getattr(net, "pad_multiple", 1))
        multiple = max(multiple, need)  # all powers of two
    return multiple


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad an NCHW tensor on the bottom/right to a multiple of ``multiple`` (reflect; replicate if too small)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < H and pw < W else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class DiffusionRunner:
    """Loaded networks, SDE and settings for one method; inpaints lists of uint8 images.

    checkpoints: network kind -> checkpoint path, for every kind the method needs
    (:func:`strdiffusion.settings.methods.method_networks`). sampler: the reverse process's constants
    (``resample=False`` for ``strdiffusion_noresample``). run: device, seed and speed settings.
    """

    def __init__(self, method: str, checkpoints: dict, sampler: SamplerConfig, run: RunSettings):
        self.method, self.run_settings = method, run
        # both ways: cuDNN allows TF32 unless told not to; before the first CUDA operation (cuBLAS workspace)
        self.precision = {"autocast": run.autocast, **configure(run.tf32, run.deterministic)}
        self.device = resolve_device(run.device)
        self.precision["device"] = str(self.device)
        if run.autocast not in (None, "none") and self.device.type != "cuda":
            raise UserError(f"--autocast {run.autocast} needs a CUDA device; this run is on {self.device}")
        meta: dict = {}
        self.nets, self.sde = load_method_networks(method, checkpoints, run, self.device, meta)
        self.metadata = meta  # network kind -> its checkpoint's metadata (the trained size among them)
        denoiser = "texture" if "texture" in self.nets else "irsde"
        # The denoiser samples with the hole fill it was trained with (IR-SDE's recipe: 1; train.hole_fill
        # mean: the known mean colour), where its checkpoint records one (ours do; the authors' do not).
        trained_fill = meta.get(denoiser, {}).get("hole_fill")
        if trained_fill is not None:
            fill = trained_fill if trained_fill == "mean" else float(trained_fill)
            sampler = dataclasses.replace(sampler, hole_fill=fill)
        self.config = sampler
        self.clipped: dict[str, float] = {}  # image id -> share of hole pixels outside [0, 1] before clamping
        s_fn, t_fn, c_fn = net_callables(self.nets.get("structure"), self.nets[denoiser], self.nets.get("critic"),
                                         autocast=run.autocast, channels_last=run.channels_last)
        # what each UNet outputs, from its checkpoint (the authors' and older ones: the noise)
        self.parameterization = {k: meta.get(k, {}).get("parameterization", "noise")
                                 for k in self.nets if k != "critic"}
        self.fns = (as_noise_fn(s_fn, self.sde, self.parameterization["structure"]) if s_fn else None,
                    as_noise_fn(t_fn, self.sde, self.parameterization[denoiser]), c_fn)
        self.multiple = pad_multiple(self.nets)
        self.totals = {"images": 0}
        log.info("%s on %s: T=%d, %s%s", method, self.device, self.sde.T, self.config,
                 " (hole fill from the checkpoint)" if trained_fill is not None else "")

    @property
    def hole_fill(self):
        """The hole value of mu this runner samples with (the checkpoint's where it records one)."""
        return self.config.hole_fill

    def run(self, images, masks, structures, ids, bin_name):
        """uint8 HxWx3 images, float 1=known HxW masks, (gray, edge) or None -> (uint8 results, structures)."""
        dev = self.device
        H, W = images[0].shape[:2]
        img = torch.stack([torch.from_numpy(np.array(i, dtype=np.uint8)).permute(2, 0, 1) for i in images])
        img = img.to(torch.float32) / 255
        m = torch.stack([torch.from_numpy(np.asarray(k, dtype=np.float32))[None] for k in masks])
        grays, edges = [], []
        if self.method != "irsde":
            from strdiffusion.data.structure import image_structure

            for image, st in zip(images, structures):
                gray, edge = st if st is not None else image_structure(image, self.run_settings.sigma)
                grays.append(torch.from_numpy(np.asarray(gray, dtype=np.float32))[None])
                edges.append(torch.from_numpy(np.asarray(edge, dtype=np.float32))[None])
        pad = lambda t: pad_to_multiple(t, self.multiple).to(dev)  # noqa: E731
        img_p, m_p = pad(img), pad(m)
        gens = make_generators(self.run_settings.seed, ids, bin_name)
        from tqdm import tqdm

        progress = functools.partial(tqdm, file=sys.stderr, leave=False)
        s_fn, t_fn, c_fn = self.fns
        if self.method == "irsde":
            out, stats = sample_irsde(self.sde, t_fn, img_p, m_p, gens, self.config.hole_fill, progress=progress,
                                      denoise_last=self.config.denoise_last)
        else:
            out, stats = sample_strdiffusion(self.sde, s_fn, t_fn, c_fn, img_p, m_p, pad(torch.stack(grays)),
                                             pad(torch.stack(edges)), gens, self.config, progress=progress)
        out = out[..., :H, :W]
        results = [to_uint8(o) for o in out]
        structs = None
        if "structure" in stats:
            structs = [(s[0, :H, :W].cpu().numpy() * 255).round().astype(np.uint8) for s in stats["structure"]]
        for key in ("structure_calls", "texture_calls", "critic_calls", "trials"):
            self.totals[key] = self.totals.get(key, 0) + int(stats[key].sum())
        self.totals["images"] += len(images)
        self.clipped.update({str(i): float(c) for i, c in zip(ids, stats["clipped"])})
        return results, structs

    def summary(self) -> str:
        n = max(self.totals["images"], 1)
        parts = [f"{k.replace('_', ' ')} {v / n:.1f}" for k, v in self.totals.items() if k != "images"]
        if self.clipped:
            parts.append(f"clipped hole pixels {100 * float(np.mean(list(self.clipped.values()))):.2f} %")
        return f"{self.totals['images']} images; per image: " + ", ".join(parts)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> uint8 HxWx3, rounding like the reference's tensor2img."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
