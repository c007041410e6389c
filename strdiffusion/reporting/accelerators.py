"""GPUs for the plan's time estimates: peak dense throughput per precision, memory and bandwidth, from the vendors'
data sheets (dense figures: the data sheets' "with sparsity" figures are twice these).

The plan turns counted work into time with a GPU's rates (:mod:`strdiffusion.reporting.work`): the peak of the
precision a job runs in (``fp32``; ``tf32`` where the config allows TF32 and no mixed precision; ``bf16`` or
``fp16`` under mixed precision), the memory bandwidth, a per-operation overhead and a utilization of the peak.
"""
from __future__ import annotations

import dataclasses

from strdiffusion.io.errors import UserError

# The share of the peak the networks' convolutions reach. Large matrix products reach about 0.8 of a GPU's dense
# peak; on this project's 2-core test machine the networks' convolutions ran at about 0.55 of its measured matrix
# product rate (tests/unit/reporting/test_plan.py holds the CPU to that); 0.8 x 0.5 = 0.4.
DEFAULT_UTILIZATION = 0.4
# Seconds per dispatched operation on a GPU: PyTorch's eager dispatch and a kernel launch, a few microseconds each.
GPU_OVERHEAD_S = 8e-6


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    fp32: float          # TFLOP/s, dense
    tf32: float
    bf16: float
    fp16: float
    memory_gb: float
    bandwidth_tbs: float  # TB/s
    source: str

    def peak(self, precision: str) -> float:
        """TFLOP/s at ``precision`` (fp32, tf32, bf16 or fp16); a precision the GPU lacks runs at fp32."""
        return getattr(self, precision) or self.fp32


ACCELERATORS = {a.name: a for a in (
    Accelerator("h100-sxm", 67.0, 494.7, 989.4, 989.4, 80, 3.35, "NVIDIA H100 Tensor Core GPU data sheet (SXM5)"),
    Accelerator("h100-pcie", 51.0, 378.0, 756.0, 756.0, 80, 2.0, "NVIDIA H100 Tensor Core GPU data sheet (PCIe)"),
    Accelerator("a100-80gb", 19.5, 156.0, 312.0, 312.0, 80, 2.039, "NVIDIA A100 Tensor Core GPU data sheet (80 GB SXM)"),
    Accelerator("a100-40gb", 19.5, 156.0, 312.0, 312.0, 40, 1.555, "NVIDIA A100 Tensor Core GPU data sheet (40 GB SXM)"),
    Accelerator("l40s", 91.6, 183.0, 362.05, 362.05, 48, 0.864, "NVIDIA L40S data sheet"),
    Accelerator("v100", 15.7, 0.0, 0.0, 125.0, 32, 0.9, "NVIDIA V100 Tensor Core GPU data sheet (SXM2; no TF32 or bf16)"),
    Accelerator("rtx-4090", 82.6, 82.6, 165.2, 165.2, 24, 1.008,
                "NVIDIA Ada Lovelace architecture whitepaper (GeForce RTX 4090, FP32 accumulate)"),
)}


def accelerator(name: str) -> Accelerator:
    try:
        return ACCELERATORS[name.lower()]
    except KeyError:
        raise UserError(f"--gpu {name}: not a GPU of the plan's table; choose one of {', '.join(ACCELERATORS)}, or "
                        "give --tflops and --bandwidth-tbs") from None


def precision(amp: str, tf32: bool) -> str:
    """The peak a job's matrix products run at: its mixed precision, else TF32 where allowed, else fp32."""
    return amp if amp in ("bf16", "fp16") else "tf32" if tf32 else "fp32"
