"""``strdiffusion weights fetch``: the metric networks' weights, hash-checked (:mod:`strdiffusion.metrics.weights`)."""
from __future__ import annotations

import argparse

from strdiffusion.metrics import weights as lib
from strdiffusion.settings.jobs import WeightSettings

from .options import add_arguments


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion weights", description=lib.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the LPIPS AlexNet and FID Inception weights (verified) if missing")
    f.add_argument("--only", default="alexnet,inception", help="which: alexnet, inception (comma separated)")
    add_arguments(f, WeightSettings)
    f.add_argument("--alexnet-url", default="", help="download address (default: torchvision's)")
    f.add_argument("--inception-url", default="", help="download address (default: pytorch-fid's release)")
    f.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds")
    f.add_argument("--allow-offline", action="store_true",
                   help="exit 0 when offline (a warning line; the metrics stay n/a), as the workflow's rule does")
    f.add_argument("--status", default="", help="write a JSON status of both files here")
    a = p.parse_args(argv)
    return lib.fetch_command(a.only, {"alexnet": a.alexnet_weights, "inception": a.inception_weights},
                             {"alexnet": a.alexnet_url, "inception": a.inception_url}, a.timeout, a.allow_offline,
                             a.status)
