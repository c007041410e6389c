"""``strdiffusion check-config``: validate config files against the schema."""
from __future__ import annotations

import argparse

from strdiffusion.settings.config import layered, validate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion check-config", description="validate a config file")
    p.add_argument("config", nargs="+", help="YAML files; later files override earlier ones (deep merge)")
    a = p.parse_args(argv)
    validate(layered(a.config), source=" + ".join(a.config))
    print(f"{' + '.join(a.config)}: valid")
    return 0
