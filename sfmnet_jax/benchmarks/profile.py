"""Where a compiled computation's time goes: XLA op time by kind and by SFMNet block.

Used by `sfmnet-benchmark profile`. One call of the compiled
step (or forward) runs under `jax.profiler`; every XLA op event of the trace is
matched to its instruction in the optimised HLO, which gives its kind (the
convolution, dot, FFT, transpose... it computes, fused or not) and the layer
that produced it (the `op_name` metadata, e.g. `up3_mo/layers_0/...`, with a
`backward` mark for ops of the gradient). Times are op durations summed over
the threads that run them, and per kind also the wall time during which one
ran. A C++ kernel (`sfmnet_*`, named by its custom-call target) is one op on
the thread that called it, however many threads of XLA's pool it uses.

On XLA:CPU with YNNPACK fusions (runtime.py's flag) the YNNPACK calls do not
appear as op events: their time shows only as `untraced_ms` ("no traced op
running"), the part of the call's wall time during which no traced op ran on
any thread.
"""

import collections
import glob
import os
import re
import statistics
import tempfile
import time

import jax

from sfmnet_jax import runtime

# A fusion's kind is the first of these found among its instructions.
KINDS = ("convolution", "dot", "fft", "transpose", "reduce-window", "reduce", "scatter",
         "gather", "concatenate", "pad", "slice")
CPP = "(any C++ kernel)"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')


def op_table(hlo_text: str):
  """{instruction name: (kind, source)} for the instructions of an optimised HLO module.

  kind: the instruction's opcode, for a custom call its target (which C++ kernel),
  for a fusion the first of KINDS it contains ("elementwise" when none); source:
  the layer path from its metadata.
  """
  opcodes, last_op_name, instructions = collections.defaultdict(set), {}, {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and not line.startswith(" "):
      current = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m and current:
      opcodes[current].add(m.group(2))
      instructions[m.group(1)] = (m.group(2), line)
      op_name = _OP_NAME.search(line)
      if op_name:
        last_op_name[current] = op_name.group(1)
  table = {}
  for name, (opcode, line) in instructions.items():
    kind, called = opcode, _CALLS.search(line)
    if opcode == "fusion":
      inner = opcodes.get(called.group(1), set()) if called else set()
      kind = next((k for k in KINDS if k in inner), "elementwise")
    elif opcode == "custom-call" and (target := _TARGET.search(line)):
      kind = target.group(1)
    op_name = _OP_NAME.search(line)
    # A fusion without metadata of its own: that of its last instruction with some.
    op_name = op_name.group(1) if op_name else last_op_name.get(called.group(1) if called else "")
    table[name] = (kind, source_of(op_name) if op_name else "(no metadata)")
  return table


def source_of(op_name: str) -> str:
  """'jit(f)/transpose(jvp(SFMNet))/up3_mo/layers_0/...' -> 'up3_mo (backward)'.

  The block is the first path component under the model (`conv_fuse` members
  appear as `layers_N`, named here `conv_fuse[N]`).
  """
  backward = "transpose(" in op_name
  parts = [p for p in op_name.split("/") if p and p != "SFMNet" and not p.startswith(
      ("jit(", "pmap(", "jvp(", "transpose(", "vmap(", "SFMNet."))]
  block = parts[0] if parts else "(outside the model)"
  m = re.fullmatch(r"layers_(\d+)", block)
  if m:
    block = f"conv_fuse[{m.group(1)}]"
  if len(parts) == 1:  # a jax op at the step's top level (loss, optimiser, ...)
    block = "(step: " + parts[0] + ")"
  return block + (" (backward)" if backward else "")


def _events(trace_dir):
  """(name, start_ns, end_ns) of every event off the Python thread in the newest trace.

  The executor's own events (ThunkExecutor, thread-pool bookkeeping) are among
  them; `profile` keeps only the names of HLO instructions.
  """
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
  data = jax.profiler.ProfileData.from_file(files[-1])
  out = []
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      out.extend((ev.name, ev.start_ns, ev.end_ns) for ev in line.events)
  return out


def _covered_ns(intervals):
  """Length of the union of [start, end) intervals."""
  total, end = 0.0, None
  for s, e in sorted((s, e) for _, s, e in intervals):
    if end is None or s > end:
      total += e - s
      end = e
    elif e > end:
      total += e - end
      end = e
  return total


def profile(call, hlo_text: str, repeats: int = 3, top: int = 15):
  """Profiles `call()` (which runs the compiled computation once and blocks) after warm-up.

  Returns wall times of untraced calls and, from one traced call, op time by
  kind, by block and for the `top` slowest ops, in milliseconds.
  """
  walls = runtime.time_calls(call, repeats, sync=lambda _: None)
  table = op_table(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    t0 = time.perf_counter()
    call()
    traced_wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    events = [e for e in _events(trace_dir) if e[0] in table]
  by_kind, by_block, by_op = collections.Counter(), collections.Counter(), collections.Counter()
  for name, start, end in events:
    kind, block = table[name]
    ms = (end - start) / 1e6
    by_kind[kind] += ms
    by_block[block] += ms
    by_op[name] += ms
  untraced_ms = max(0.0, traced_wall * 1e3 - _covered_ns(events) / 1e6)
  # Wall time during which some op of a kind ran (ops of one kind may overlap on
  # several threads; op time counts them twice, this once).
  wall_by_kind = {kind: _covered_ns([e for e in events if table[e[0]][0] == kind]) / 1e6
                  for kind in by_kind}
  cpp = [e for e in events if table[e[0]][0].startswith("sfmnet_")]
  if cpp:
    wall_by_kind[CPP] = _covered_ns(cpp) / 1e6
  return {
      "wall_ms": statistics.median(walls) * 1e3, "walls_ms": [w * 1e3 for w in walls],
      "traced_wall_ms": traced_wall * 1e3, "op_ms": sum(by_kind.values()),
      "untraced_ms": untraced_ms,
      "by_kind": dict(by_kind.most_common()), "wall_by_kind": wall_by_kind,
      "by_block": dict(by_block.most_common()),
      "top_ops": [{"name": n, "kind": table[n][0], "block": table[n][1], "ms": ms}
                  for n, ms in by_op.most_common(top)],
  }


def print_profile(result, title: str, top_blocks: int = 15) -> None:
  print(f"{title}: {result['wall_ms']:.0f} ms per call (traced call {result['traced_wall_ms']:.0f} "
        f"ms; op time summed over threads {result['op_ms']:.0f} ms; no traced op running "
        f"{result['untraced_ms']:.0f} ms)")
  print("  op time by kind (and the wall time during which one ran):")
  walls = result.get("wall_by_kind", {})
  if CPP in walls:
    print(f"    {CPP:<36} {'':>9}    {walls[CPP]:9.1f} ms")
  for kind, ms in result["by_kind"].items():
    print(f"    {kind:<36} {ms:9.1f} ms {walls.get(kind, float('nan')):9.1f} ms")
  print(f"  op time by block (top {top_blocks}):")
  for block, ms in list(result["by_block"].items())[:top_blocks]:
    print(f"    {block:<34} {ms:9.1f} ms")
  print("  slowest ops:")
  for op in result["top_ops"]:
    print(f"    {op['ms']:8.1f} ms  {op['kind']:<12} {op['block']:<34} {op['name']}")
