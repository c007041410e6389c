"""``strdiffusion train``: train the structure, texture, critic or IR-SDE network (:mod:`strdiffusion.training.trainer`)."""
from __future__ import annotations

import argparse
import sys

from strdiffusion.training import trainer as lib

from .options import add_arguments, from_parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strdiffusion train", description=lib.__doc__.splitlines()[0])
    add_arguments(p, lib.TrainJob)
    return p


def parse_args(argv) -> lib.TrainJob:
    return from_parsed(lib.TrainJob, build_parser().parse_args(argv))


def main(argv=None) -> int:
    return lib.run_job(parse_args(sys.argv[1:] if argv is None else argv))
