"""XLA's cost analysis of a step or forward, and roofline estimates for named accelerators.

A function is lowered for a platform without needing its devices (JAX's
cross-platform lowering), so a CPU-only machine can say what a GPU or TPU
would be asked to compute: XLA's count of FLOPs and of bytes accessed, for the
plain model (no CPU kernels) as it runs there. The roofline time of a device
is max(FLOPs / peak FLOP/s, bytes / memory bandwidth): an ESTIMATE, not a
measurement, and only an order of magnitude. The FLOP term is a lower bound
(peak FLOP/s are the matrix units'; SFMNet's elementwise and FFT work runs
slower); the bytes are counted per operation before XLA fuses any, an upper
bound on memory traffic, so a memory-bound figure can overstate the time.
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


def lowered_cost(traced, platform: str) -> Dict[str, float]:
  """{"flops", "bytes_accessed"} of a traced function (`jax.jit(fn).trace(...)`) lowered for
  `platform` ("cuda", "tpu", "cpu")."""
  cost = traced.lower(lowering_platforms=(platform,)).cost_analysis()
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
  """Cost and roofline per device; `build(platform)` returns (fn, args) as they run there.

  Every platform but the CPU runs the same plain model, so one trace serves all of them.
  """
  traced, out = {}, []
  for device in devices:
    kind = "cpu" if device.platform == "cpu" else "accelerator"
    if kind not in traced:
      fn, args = build(device.platform)
      traced[kind] = jax.jit(fn).trace(*args)
    cost = lowered_cost(traced[kind], device.platform)
    out.append({**cost, "platform": device.platform, **roofline(cost, device, dtype)})
  return out
