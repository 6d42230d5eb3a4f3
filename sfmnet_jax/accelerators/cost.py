"""The one reader of XLA's own figures for a program: its cost (FLOPs, bytes accessed) and
its memory (arguments, temporaries, outputs).

`xla_cost` takes a lowered program (XLA's HloCostAnalysis of the module before
optimization: what the computation asks for) or a compiled one (the
executable's own count after fusion, per device: what the chip moves). A
CUDA executable gives no cost: there HloCostAnalysis runs on each instruction
of its optimized module for the bytes (`hlo_costs.instruction_costs`: the
cuDNN and cuBLAS calls, which the analysis counts as nothing, as the bytes of
their operands and results), and the FLOPs come from the module before
optimization (fusion moves no FLOP).
"""

import re
from typing import Dict, Optional

from sfmnet_jax.accelerators.hlo_costs import hlo_cost_analysis, instruction_costs

# Custom calls that exist only on the CPU: the CPU plugin's kernels (`sfmnet_*`), XLA:CPU's
# LAPACK and DUCC FFT calls. A program compiled for a GPU or TPU must hold none.
CPU_ONLY = re.compile(r"^(sfmnet_\w+|lapack_\w+|ducc_\w+)$")


def _first(cost):
  """The cost dict of an analysis that may come as a one-element list."""
  return cost[0] if isinstance(cost, (list, tuple)) and cost else cost


def xla_cost(program, lowered=None, num_devices: int = 1) -> Dict[str, float]:
  """{"flops", "bytes_accessed"[, "xla_optimal_s", "flops_source"]} of a lowered or compiled
  program, per device. For a compiled program whose executable counts nothing (CUDA),
  `lowered` (the same program before compiling) gives the FLOPs, divided over
  `num_devices` (the unpartitioned module is the whole program)."""
  cost = _first(program.cost_analysis())
  out = {}
  if not cost and hasattr(program, "runtime_executable"):
    rows = instruction_costs(program.as_text())
    cost = {"bytes accessed": sum(r["bytes"] for r in rows),
            "flops": sum(r["flops"] for r in rows)}
    out["bytes_source"] = ("XLA's analysis of each instruction of the optimized module, "
                           "library calls (cuDNN, cuBLAS) as their operands' and results' bytes")
    if lowered is not None:
      out["flops_source"] = "the module before optimization (cuDNN/cuBLAS calls uncounted after)"
      flops = hlo_cost_analysis(lowered.compiler_ir("hlo").get_hlo_module()).get("flops", 0.0)
      cost = dict(cost, flops=flops / num_devices)
  cost = cost or {}
  out.update(flops=float(cost.get("flops", 0.0)),
             bytes_accessed=float(cost.get("bytes accessed", 0.0)))
  if cost.get("optimal_seconds", 0) > 0:  # XLA:TPU's own estimate, where it gives a real one
    out["xla_optimal_s"] = float(cost["optimal_seconds"])
  return out


def memory_of(compiled, hbm_bytes: Optional[float] = None) -> Dict[str, float]:
  """Bytes of the compiled program's arguments, temporaries, outputs and aliased buffers,
  their total, and with `hbm_bytes` whether it fits the device."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  out = {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes,
         "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes, "total": total}
  if hbm_bytes:
    out.update(device_memory=hbm_bytes, fits=bool(total <= hbm_bytes))
  return out


def custom_calls(compiled):
  """The custom-call targets of a compiled program."""
  return sorted(set(re.findall(r'custom_call_target="([\w.]+)"', compiled.as_text())))


def cpu_only_calls(compiled):
  """Its custom calls that exist only on the CPU (none may be in a GPU or TPU program)."""
  return [c for c in custom_calls(compiled) if CPU_ONLY.match(c)]
