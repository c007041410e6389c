"""``strdiffusion inpaint``: a shard of the pipeline's test pairs, or your own images (:mod:`strdiffusion.inpainting.run`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.inpainting import run as lib
from strdiffusion.inpainting.window import WindowSettings
from strdiffusion.io.errors import UserError
from strdiffusion.runtime.signals import raise_on_notice
from strdiffusion.settings.jobs import RunSettings, SamplerSettings, ShardSettings
from strdiffusion.settings.methods import METHODS, NETWORKS

from .options import add_arguments, from_parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="strdiffusion inpaint",
        description="Inpaint a shard of the pipeline's test pairs, or your own image(s). "
                    "MASK CONVENTION: white (255) pixels of the mask file are HOLES to fill; black pixels are kept.")
    p.add_argument("--method", default="strdiffusion", choices=METHODS)
    g = p.add_argument_group("pipeline shard")
    g.add_argument("--pairs", help="pairs CSV (image_id, bin, mask)")
    g.add_argument("--bin", help="hole-ratio bin label, e.g. 10-20")
    g.add_argument("--gt-dir", help="folder of ground-truth test images <image_id>.png")
    g.add_argument("--structure-dir", help="folder with gray/ and edge/ maps of the test images")
    g.add_argument("--shard", type=int, default=0)
    add_arguments(g, ShardSettings)
    g.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="seconds to wait while a live job writes the same shard, then keep what it finished "
                        "(0 = refuse at once, -1 = while that job lives)")
    g.add_argument("--out", help="output folder (shard) or output PNG/folder (own images)")
    add_sampling_arguments(p)
    return p


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the diffusion samplers and of own-image mode (``strdiffusion inpaint``), from
    :class:`SamplerSettings` and :class:`RunSettings`."""
    add_arguments(parser, SamplerSettings, "diffusion sampling (defaults reproduce the reference)")
    add_arguments(parser, RunSettings, "how the sampler runs (results unchanged unless noted)")
    c = parser.add_argument_group("networks")
    for net in NETWORKS:
        c.add_argument(f"--{net}-checkpoint", metavar="FILE", help=f"{net} network checkpoint")
    c.add_argument("--checkpoints", metavar="DIR",
                   help=f"folder with {', '.join(n + '.pt' for n in NETWORKS)} (explicit --*-checkpoint wins)")
    u = parser.add_argument_group("own images (instead of a pipeline shard)")
    u.add_argument("--image", metavar="IMG|DIR", help="image file, or folder of images (any size)")
    u.add_argument("--mask", metavar="MASK|DIR",
                   help="mask file of the image's size, or folder matched by file name: WHITE = HOLE to fill, black = keep")
    add_arguments(u, WindowSettings)


def diffusion_options(args: argparse.Namespace) -> lib.Diffusion:
    """The diffusion methods' settings and network files from :func:`add_sampling_arguments`' options."""
    return lib.Diffusion(sampler=from_parsed(SamplerSettings, args), run=from_parsed(RunSettings, args),
                         files={net: Path(f) for net in NETWORKS if (f := getattr(args, f"{net}_checkpoint", None))},
                         folder=Path(args.checkpoints) if args.checkpoints else None)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.image:
        with raise_on_notice():
            lib.inpaint_user_images(Path(args.image), Path(args.mask) if args.mask else None,
                                    Path(args.out) if args.out else None, args.method, diffusion_options(args),
                                    from_parsed(WindowSettings, args))
        return 0
    missing = [k for k in ("pairs", "bin", "gt_dir", "out") if not getattr(args, k)]
    if missing:
        raise UserError("pipeline mode needs " + ", ".join("--" + k.replace("_", "-") for k in missing)
                        + " (or use --image/--mask for your own images)")
    if args.shard < 0:
        raise UserError("--shard must be >= 0")
    shard_size = from_parsed(ShardSettings, args).shard_size  # checks --shard-size
    job = lib.ShardJob(pairs=Path(args.pairs), gt_dir=Path(args.gt_dir), bin=args.bin, out=Path(args.out),
                       method=args.method, shard=args.shard, shard_size=shard_size,
                       structure_dir=Path(args.structure_dir) if args.structure_dir else None,
                       lock_wait=args.lock_wait)
    lib.run_shard(job, diffusion_options(args))
    return 0
