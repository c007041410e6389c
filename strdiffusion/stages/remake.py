"""``strdiffusion remake``: re-make a trained checkpoint from its recorded commit and command
(:mod:`strdiffusion.models.remake`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from strdiffusion.models import remake as lib


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion remake", description=lib.__doc__.splitlines()[0],
                                epilog="Exit status 0: the replay equals the file; 1: it differs (named).")
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `strdiffusion train` from a git checkout")
    p.add_argument("--work", type=Path, default=Path("remake"),
                   help="work folder: the commit's tree, its inputs and the replay (kept; a rerun resumes)")
    p.add_argument("--repo", type=Path, help="git clone holding the commit (default: the one around the cwd)")
    p.add_argument("--configfile", help="the config that made the training inputs, relative to the commit's tree "
                                        "(default: config/<data set>.yaml where it exists, else the default config)")
    p.add_argument("--cores", type=int, default=2, help="cores for making the inputs (default 2)")
    p.add_argument("--rows", type=int, help="quick check: stop after this many learning-curve rows and compare them")
    p.add_argument("--segments", help="a training resumed with more iterations, in a file older than its `resumes` "
                                      "record: the --iterations of each run, e.g. 10000,20000")
    a = p.parse_args(argv)
    try:
        totals = [int(t) for t in a.segments.split(",")] if a.segments else None
    except ValueError:
        raise lib.UserError(f"--segments {a.segments}: give whole numbers separated by commas, e.g. 10000,20000") \
            from None
    out = lib.remake(a.checkpoint, a.work, a.repo, a.configfile, a.cores, a.rows, totals)
    what = f"first {a.rows} learning-curve rows" if a.rows is not None else "weights and learning curve"
    if out["equal"]:
        print(f"{a.checkpoint}: the replay at {out['commit'][:10]} ({out['configfile']}) gives the same {what}")
        return 0
    differs = [f"{len(out['weights'])} tensor(s), first {out['weights'][0]}"] if out["weights"] else []
    differs += [f"curve column(s) {', '.join(out['curve'])}"] if out["curve"] else []
    print(f"{a.checkpoint}: the replay at {out['commit'][:10]} differs: {'; '.join(differs)}")
    return 1
