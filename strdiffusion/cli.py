"""Command line: ``strdiffusion <stage> ...`` (also ``python -m strdiffusion <stage> ...``).

Each stage is a module of :mod:`strdiffusion.stages` with ``main(argv)``. User errors (bad files, keys,
values) are printed as one line, ``error: ...``, with exit status 2; no traceback. A job stopped on notice
(SIGTERM, SIGUSR1, its SLURM time limit; :mod:`strdiffusion.runtime.signals`) prints ``interrupted by ...`` and
exits with status 75.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

STAGES = {
    "data": ("stages.data", "prepare a data set (builtin photographs or a folder) into train/test crops"),
    "structure": ("stages.structure", "grayscale and Canny edge maps of a folder of images"),
    "masks": ("stages.masks", "generate or import hole masks per hole-ratio bin; pair them with test images"),
    "train": ("stages.train", "train the structure, texture, critic or IR-SDE network"),
    "inpaint": ("stages.inpaint", "inpaint images: a pipeline shard, or your own image and mask"),
    "metrics": ("stages.metrics", "PSNR, SSIM, L1, LPIPS per image; FID and KID per set"),
    "tables": ("stages.tables", "paper-style tables (Markdown, LaTeX, CSV)"),
    "figures": ("stages.figures", "qualitative grids and metric-vs-hole-ratio plots"),
    "explorer": ("stages.explorer", "a static page of single test images, every row's fill and metrics; filter, sort"),
    "export": ("stages.export", "write the test pairs in the layouts of other inpainting codes (LaMa, RePaint, plain)"),
    "import": ("stages.imports", "score an outside method's outputs of one bin like the built-in rows"),
    "curves": ("stages.curves", "learning-curves figure of the trained networks"),
    "shrink": ("stages.shrink", "store a trained checkpoint's weights as float16 for shipping (half the size)"),
    "remake": ("stages.remake", "re-make a trained checkpoint from the commit and command in its metadata"),
    "check-config": ("stages.check_config", "validate a config file against the schema"),
    "weights": ("stages.weights", "fetch the LPIPS AlexNet and FID Inception weights (hash-checked) into the torch hub cache"),
    "env": ("stages.env", "print devices, versions and the job's GPU slot"),
    "docs": ("stages.docs", "regenerate the measured tables of README.md and docs/ from docs/results/ (--check: compare)"),
    "plan": ("stages.plan", "jobs, peak memory, GPU-hours and disk of a config and profile, before running it"),
}


def _usage() -> str:
    lines = ["usage: strdiffusion <stage> [options]   (strdiffusion <stage> --help for a stage)", "", "stages:"]
    lines += [f"  {name:<13} {text}" for name, (_, text) in STAGES.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from strdiffusion import __version__

        print(__version__)
        return 0
    # Idle OpenMP threads must not spin: several jobs share the cores (Snakemake runs jobs side by
    # side), and spinning made 2-thread torch 5-30x slower than 1 thread on a shared 2-core machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage '{stage}'\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("STRDIFFUSION_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)
    from strdiffusion.io.errors import UserError, disk_full_message, is_disk_full
    from strdiffusion.runtime.gpu import claim_from_env
    from strdiffusion.runtime.signals import INTERRUPTED, Interrupted
    from strdiffusion.stages.options import in_user_terms

    try:
        claim_from_env()  # before anything initialises CUDA
        module = importlib.import_module(f".{STAGES[stage][0]}", __package__)
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"error: {in_user_terms(str(exc), stage)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # a write outside the atomic helpers: the helpers name their output and leave nothing partial
        print(f"error: {disk_full_message(exc.filename or os.getcwd(), exc.errno)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
