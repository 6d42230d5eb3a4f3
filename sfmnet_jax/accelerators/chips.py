"""The chips this project reports on, and the roofline: a step's time bound on a chip.

A roofline time is max(FLOPs / peak FLOP/s, bytes accessed / memory bandwidth):
what the chip's datasheet allows at best for XLA's count of the program's work,
not a measured time.
"""

import dataclasses
from typing import Dict, Optional

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: float
  tflops: Dict[str, float]  # peak dense matrix TFLOP/s by compute dtype
  hbm_tb_per_s: float
  source: str


# By JAX's device_kind. float32 matrix products run as one bfloat16 pass on TPUs (JAX's
# default precision) and as TF32 on the H100's tensor cores.
CHIPS = {
    "TPU v5 lite": Chip("TPU v5e", 16 * GIB, {"bfloat16": 197.0, "float32": 197.0}, 0.819,
                        "Google Cloud TPU v5e documentation"),
    "TPU v4": Chip("TPU v4", 32 * GIB, {"bfloat16": 275.0, "float32": 275.0}, 1.2288,
                   "Google Cloud TPU v4 documentation"),
    "TPU v5": Chip("TPU v5p", 95 * GIB, {"bfloat16": 459.0, "float32": 459.0}, 2.765,
                   "Google Cloud TPU v5p documentation"),
    "TPU v6 lite": Chip("TPU v6e", 32 * GIB, {"bfloat16": 918.0, "float32": 918.0}, 1.64,
                        "Google Cloud TPU v6e (Trillium) documentation"),
    "NVIDIA H100 80GB HBM3": Chip("NVIDIA H100 SXM", 80e9, {"bfloat16": 989.4, "float32": 494.7},
                                  3.35, "NVIDIA H100 SXM datasheet (dense, no sparsity)"),
}


def roofline(cost: Dict[str, float], chip: Optional[Chip], dtype: str,
             per_device_batch: Optional[int] = None) -> dict:
  """The roofline of one call whose XLA cost is `cost` ({"flops", "bytes_accessed"}) on
  `chip` in `dtype` ({} without a chip), with images/s per chip for `per_device_batch`."""
  if chip is None:
    return {}
  compute_s = cost["flops"] / (chip.tflops[dtype] * 1e12)
  memory_s = cost["bytes_accessed"] / (chip.hbm_tb_per_s * 1e12)
  step_s = max(compute_s, memory_s)
  out = {"compute_bound_s": compute_s, "memory_bound_s": memory_s, "roofline_s": step_s,
         "bound": "compute" if compute_s >= memory_s else "memory",
         "roofline_over_compute_bound": step_s / compute_s if compute_s else None,
         "peak_tflops": chip.tflops[dtype], "hbm_tb_per_s": chip.hbm_tb_per_s,
         "chip_source": chip.source}
  if per_device_batch:
    out["images_per_s_per_chip"] = per_device_batch / step_s if step_s else None
  return out
