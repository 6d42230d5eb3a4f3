"""XLA's cost analysis of a step or forward, and roofline estimates for named accelerators.

A function is lowered for a platform without needing its devices (JAX's
cross-platform lowering), so a CPU-only machine can say what a GPU or TPU
would be asked to compute: XLA's count of FLOPs and of bytes accessed, for the
plain model (no CPU kernels) as it runs there. The roofline time of a device
is max(FLOPs / peak FLOP/s, bytes / memory bandwidth): an ESTIMATE and a lower
bound, not a measurement. The bytes are counted per operation before XLA
fuses any (an upper bound on memory traffic), and the peak FLOP/s are the
matrix units' (most of SFMNet's elementwise and FFT work runs slower).
"""

import dataclasses
from typing import Dict, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Device:
  name: str
  platform: str  # the JAX lowering platform
  tflops: Dict[str, float]  # peak dense TFLOP/s by compute dtype (matrix units)
  hbm_tb_per_s: float
  source: str


# Public spec-sheet peaks. float32 on GPUs is TF32 on the tensor cores (JAX's default
# precision there); on TPUs float32 matrix products run as one bfloat16 pass (DEFAULT).
DEVICES = (
    Device("NVIDIA H100 SXM", "cuda", {"bfloat16": 989.4, "float32": 494.7}, 3.35,
           "NVIDIA H100 datasheet (dense, no sparsity)"),
    Device("TPU v5e", "tpu", {"bfloat16": 197.0, "float32": 197.0}, 0.819,
           "Google Cloud TPU v5e documentation"),
)


def lowered_cost(fn, args, platform: str) -> Dict[str, float]:
  """{"flops", "bytes_accessed"} of `fn(*args)` lowered for `platform` ("cuda", "tpu", "cpu")."""
  lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def roofline(cost: Dict[str, float], device: Device, dtype: str) -> Dict[str, float]:
  """The roofline estimate of one call on `device` (seconds; see the module docstring)."""
  compute_s = cost["flops"] / (device.tflops[dtype] * 1e12)
  memory_s = cost["bytes_accessed"] / (device.hbm_tb_per_s * 1e12)
  return {"device": device.name, "estimate_s": max(compute_s, memory_s),
          "compute_bound_s": compute_s, "memory_bound_s": memory_s,
          "bound": "compute" if compute_s >= memory_s else "memory",
          "peak_tflops": device.tflops[dtype], "hbm_tb_per_s": device.hbm_tb_per_s,
          "spec_source": device.source}


def estimates(build, dtype: str, devices: Sequence[Device] = DEVICES):
  """Cost and roofline per device; `build(platform)` returns (fn, args) as they run there."""
  out = []
  for device in devices:
    fn, args = build(device.platform)
    cost = lowered_cost(fn, args, device.platform)
    out.append({**cost, "platform": device.platform, **roofline(cost, device, dtype)})
  return out
