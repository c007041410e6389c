"""Entry point: ``python -m benchmarks [--quick] [--only forward,sampler,...] [--out FILE]``."""
import os
import sys

# Other jobs share the 2 cores: with OpenMP's default spin-waiting, 2 torch threads on a loaded
# machine run 5-30x slower than 1 (measured 2026-11-23, load 7: tiny UNet forward 0.2 s -> 1-7 s).
# Passive waiting removes that collapse and costs little on an idle machine. Must be set before
# torch (libgomp) loads; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .run import main  # noqa: E402

sys.exit(main())
