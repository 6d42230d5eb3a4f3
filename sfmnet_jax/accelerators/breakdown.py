"""Where a compiled program's bytes and FLOPs go, by the model part that each instruction's
metadata names (`sfmnet-benchmark aot --breakdown`).

The costs per instruction are `hlo_costs.instruction_costs` (XLA's analysis of each
instruction alone, with the TPU's tile padding and memory spaces). Parts come from
each instruction's `op_name` metadata (or, for a copy that layout assignment
inserted without one, that of the instruction whose result it takes): the
model's module path (the generator's blocks and their pieces: a FreqBlock's
spectrum, polar, cartesian and inverse methods and its convolutions, a
FuseBlock's attention and its convolutions, ResidualGroups, Down/Up,
head/tail; the discriminators and VGG), forward or backward (`transpose(...)`
in the path), and outside the networks the loss, the optimizer update and the
gradients' all-reduce (the train steps' named scopes).
"""

import collections
from typing import Dict, List, Tuple

from sfmnet_jax.accelerators import chips
from sfmnet_jax.accelerators.hlo_costs import hlo_cost_analysis, instruction_costs

NETWORKS = ("SFMNet", "SpatialDiscriminator", "FrequencyDiscriminator", "VGGFeatures")
FREQ_METHODS = {"spectrum": "spectrum (rfft2)", "polar": "polar (|F|, angle)",
                "cartesian": "cartesian (cos, sin)", "inverse_magnitude": "inverse (irfft2, abs)"}
FREQ_CHILDREN = {"amp_fuse": "amplitude/phase 3x3 convs", "pha_fuse": "amplitude/phase 3x3 convs",
                 "fpre": "1x1 convs", "post": "1x1 convs"}
FUSE_CHILDREN = {"fre": "3x3 convs", "spa": "3x3 convs", "fuse": "gate convs"}


def module_classes(model) -> Dict[Tuple[str, ...], str]:
  """{module path: class name} of `model`'s submodules (traced, nothing computed)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  found = {}

  def record(next_fun, args, kwargs, context):
    found[tuple(context.module.path)] = type(context.module).__name__
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                       jnp.float32))
  # Modules a container holds but the model calls one by one (SFMNet's conv_fuse, never
  # called itself) are named in op_name metadata without the container's name.
  for path, kind in list(found.items()):
    if len(path) > 1 and path[:1] not in found:
      found.setdefault(path[1:], kind)
  return found


def _generator_part(path: List[str], classes) -> str:
  """The part of SFMNet that an op at `path` (components under the model) belongs to."""
  modules, method = [], None
  for component in path:
    name, _, m = component.partition(".")
    if m and modules and name == modules[-1]:  # a method's scope: "layers_1.spectrum"
      method = m
      continue
    if tuple(modules + [name]) not in classes:
      break
    modules.append(name)
    method = m or None
  chain = [(tuple(modules[:i + 1]), classes[tuple(modules[:i + 1])]) for i in range(len(modules))]
  kinds = [kind for _, kind in chain]
  for i, (prefix, kind) in enumerate(chain):
    below = modules[len(prefix)] if len(modules) > len(prefix) else None
    if kind == "FreqBlock":
      return "FreqBlock: " + (FREQ_METHODS.get(method) or FREQ_CHILDREN.get(below)
                              or "residual, nan_to_num")
    if kind == "FuseBlock":
      if "ChannelAttention" in kinds[i:]:
        return "FuseBlock: channel attention"
      return "FuseBlock: " + (FUSE_CHILDREN.get(below) or "gates, sums, nan_to_num")
    if kind in ("ResidualGroup", "Down", "Up"):
      return kind
  if kinds and kinds[0] == "Sequential" and len(kinds) > 1 and kinds[1] == "ConvAct":
    return "head/tail convs"
  return "SFMNet (outside its blocks)"


def part_of(op_name: str, opcode: str, classes) -> Tuple[str, str]:
  """(part, "forward"|"backward"|"") of an instruction, from its op_name metadata and opcode;
  `classes` is `module_classes` of the generator."""
  direction = "backward" if "transpose(" in op_name else "forward"
  components = [c for c in op_name.split("/") if c]
  for network in NETWORKS:
    for i, c in enumerate(components):
      if c == network or c.startswith(network + ".") or c.startswith(f"jvp({network})") \
          or c.startswith(f"transpose(jvp({network}))"):
        if network != "SFMNet":
          return network, direction
        rest = [x for x in components[i + 1:] if not x.startswith("SFMNet.")]
        return _generator_part(rest, classes), direction
  if opcode.startswith("all-reduce") or "allreduce" in components or "psum" in components:
    return "gradient all-reduce", ""
  if "optimizer" in components:
    return "optimizer update", ""
  if any(c == "loss" or c.endswith("(loss)") for c in components) or "loss" in op_name:
    return "loss", direction
  if not op_name:
    return "(no metadata: layout copies)", ""
  return "step (other)", ""


def breakdown(compiled, row: dict, num_resblocks: int = 2) -> dict:
  """The table of a compiled program (see the module doc): totals against the compiler's,
  and per part and direction its FLOPs, XLA's bytes, padded bytes, and how much of them
  are copies (relayouts, transposes, async copies)."""
  from sfmnet_jax.model.generator import SFMNet  # pylint: disable=g-import-not-at-top
  rows = instruction_costs(compiled.as_text())
  classes = module_classes(SFMNet(num_features=8, num_resblocks=num_resblocks))
  parts = collections.defaultdict(lambda: collections.Counter())
  for r in rows:
    if r["source"] == "free":
      continue
    part, direction = part_of(r["op_name"], r["opcode"], classes)
    key = f"{part} ({direction})" if direction else part
    p = parts[key]
    p["instructions"] += 1
    p["flops"] += r["flops"]
    p["bytes"] += r["bytes"]
    p["padded_bytes"] += r["padded_bytes"]
    p["off_chip_padded_bytes"] += r["off_chip_padded_bytes"]
    if r["opcode"] in ("copy", "transpose") or r["opcode"].startswith(("slice-", "copy-")):
      p["copy_padded_bytes"] += r["padded_bytes"]
  whole = hlo_cost_analysis(compiled.runtime_executable().hlo_modules()[0])
  total = {k: float(sum(r[k] for r in rows))
           for k in ("flops", "bytes", "padded_bytes", "off_chip_padded_bytes")}
  table = sorted(({"part": k, **{m: float(v) for m, v in p.items()}} for k, p in parts.items()),
                 key=lambda t: -t["padded_bytes"])
  batch = row["per_device_batch"]
  # The roofline of the bytes that leave the chip: the compiler's count includes the
  # accesses to arrays its memory-space assignment keeps on chip (VMEM on a TPU).
  off_chip = chips.roofline(
      {"flops": row["flops"], "bytes_accessed": total["off_chip_padded_bytes"]},
      chips.CHIPS.get(row["device_kind"]), row["dtype"], batch)
  return {"program": row["program"], "dtype": row["dtype"], "device_kind": row["device_kind"],
          "per_device_batch": batch,
          "compiler": {"flops": row["flops"], "bytes_accessed": row["bytes_accessed"]},
          "off_chip_roofline": off_chip,
          "xla_module_analysis": {"flops": float(whole.get("flops", 0.0)),
                                  "bytes": float(whole.get("bytes accessed", 0.0))},
          "sum_of_instructions": total,
          "instructions": len(rows),
          "estimated": sum(r["source"] == "shapes" for r in rows),
          "parts": table}


def print_table(t: dict, top: int = 25) -> None:
  c, s = t["compiler"], t["sum_of_instructions"]
  print(f"  breakdown of {t['program']} ({t['dtype']}, {t['per_device_batch']} images/device, "
        f"{t['device_kind']}): compiler {c['bytes_accessed'] / 1e9:.2f} GB, {c['flops'] / 1e9:.1f}"
        f" GFLOP; instructions' sum {s['bytes'] / 1e9:.2f} GB (XLA's count), "
        f"{s['padded_bytes'] / 1e9:.2f} GB padded ({s['off_chip_padded_bytes'] / 1e9:.2f} GB "
        f"off chip), {s['flops'] / 1e9:.1f} GFLOP")
  r = t.get("off_chip_roofline") or {}
  if r:
    print(f"    roofline of the off-chip bytes: {r['roofline_s'] * 1e3:.2f} ms ({r['bound']}), "
          f"{r['images_per_s_per_chip']:.0f} img/s/chip")
  print(f"    {'part':<46} {'GFLOP':>8} {'GB':>7} {'GB pad':>7} {'share':>6} {'copies':>7} "
        f"{'off chip':>8}")
  for p in t["parts"][:top]:
    print(f"    {p['part']:<46} {p['flops'] / 1e9:8.1f} {p['bytes'] / 1e9:7.2f} "
          f"{p['padded_bytes'] / 1e9:7.2f} {p['padded_bytes'] / s['padded_bytes']:6.1%} "
          f"{p.get('copy_padded_bytes', 0) / 1e9:7.2f} "
          f"{p.get('off_chip_padded_bytes', 0) / 1e9:8.2f}")
