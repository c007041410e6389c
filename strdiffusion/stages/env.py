"""``strdiffusion env``: print the job's view of devices (for debugging profiles)."""
from __future__ import annotations

import argparse
import os
import platform
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="strdiffusion env", description="print devices, versions and GPU slot")
    p.add_argument("--hold", type=float, default=0.0, help="keep the GPU slot this many seconds")
    a = p.parse_args(argv)
    import torch

    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}")
    print(f"python={platform.python_version()} torch={torch.__version__} cuda_available={torch.cuda.is_available()} "
          f"threads={torch.get_num_threads()}", flush=True)
    time.sleep(a.hold)
    return 0
