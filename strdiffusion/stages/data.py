"""``strdiffusion data``: a data set prepared into train/test crops (:mod:`strdiffusion.data.prepare`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.data import prepare as lib
from strdiffusion.settings.jobs import DataSettings

from .options import add_arguments, from_parsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion data", description=lib.__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (train/, test/, manifest.csv)")
    add_arguments(p, DataSettings)
    a = p.parse_args(argv)
    s = from_parsed(DataSettings, a)
    lib.prepare(Path(a.out), s.source, s.size, s.seed, s.path, s.train_list, s.test_list, s.test_fraction, s.resize,
                s.skip_bad_files, s.max_train, s.test_path, s.n_test)
    return 0
