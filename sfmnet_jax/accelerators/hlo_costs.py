"""XLA's cost of each top-level instruction of an optimized HLO module, by itself.

Each top-level instruction of the entry computation is cut out into a module of
its own (its operands become parameters of their compiled shapes and layouts;
the computations it calls come along) and XLA's HloCostAnalysis counts it: its
FLOPs, and the bytes it reads per operand and writes. Summed over the
instructions these are the analysis of the whole optimized module
(`hlo_cost_analysis`), but for the GPU's library calls (cuDNN, cuBLAS), which
that analysis counts as nothing and which are counted here as the bytes of
their operands and results (`source` "shapes"). XLA's
count counts every byte at its logical size; the TPU executable's own count
(`compiled.cost_analysis()`) is larger: a TPU lays arrays out in tiles
(`T(8,128)`: the two most minor dimensions padded to multiples of 8 and 128),
so a dimension of 3 colours or 64 channels in the lanes moves as 128. Each
operand's and output's bytes are therefore also given scaled by its tile
padding (`padded_bytes`, an estimate), and the part of those in the default
memory space (`off_chip_padded_bytes`: not `S(1)`, the TPU's on-chip VMEM, where
the compiler's memory-space assignment keeps arrays between their uses).
"""

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

# Bytes per element of XLA's primitive types (pred is a byte in XLA's own count).
ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                 "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                 "c128": 16, "token": 0, "f8e4m3fn": 1, "f8e5m2": 1}
# The parameters: what the program is given, not what it does (every other instruction is
# counted as XLA counts it, a tuple's pointers included).
FREE = {"parameter"}
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\](?:\{([^}]*)\})?")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|async_execution_thread_root)=(%[\w.\-]+)"
                     r"|branch_computations=\{([^}]*)\}|called_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
# GPU library calls (cuDNN convolutions, cuBLAS matrix products): HloCostAnalysis counts
# neither their FLOPs nor their bytes; their operands and results are the bytes they move.
_LIBRARY_CALL = re.compile(r'custom_call_target="__(cudnn|cublas)')


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: List[str]
  line: str

  @property
  def op_name(self) -> str:
    m = _OP_NAME.search(self.line)
    return m.group(1) if m else ""


def _matching(text: str, start: int, open_="(", close=")") -> int:
  """The index just past the bracket that closes the one at `start`."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] == open_:
      depth += 1
    elif text[i] == close:
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f"unbalanced {open_}{close} in {text[:200]}")


def parse_instruction(line: str) -> Optional[Instruction]:
  """An HLO instruction line -> Instruction (None for lines that are not one)."""
  m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
  if not m:
    return None
  i = m.end()
  if line[i] == "(":
    j = _matching(line, i)
  else:
    j = line.index(" ", i)
  shape = line[i:j]
  k = line.index("(", j)
  opcode = line[j:k].strip()
  end = _matching(line, k)
  operands = re.findall(r"%([\w.\-]+)", line[k + 1:end - 1])
  return Instruction(m.group(1), shape, opcode, operands, line)


def computations(hlo_text: str) -> Tuple[Dict[str, List[str]], str]:
  """({computation name: its text lines, header first}, the entry computation's name)."""
  comps, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(ENTRY )?%([\w.\-]+) ", line)
    if m and line.rstrip().endswith("{"):
      current = m.group(2)
      comps[current] = [line]
      if m.group(1):
        entry = current
    elif current is not None:
      comps[current].append(line)
      if line.startswith("}"):
        current = None
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return comps, entry


def _called(line: str) -> List[str]:
  names = []
  for single, branches, called in _CALLED.findall(line):
    for group in (single, branches, called):
      names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
  return names


def _with_callees(names, comps) -> List[str]:
  """`names` and every computation they call, callees first."""
  order, seen = [], set()

  def visit(name):
    if name in seen or name not in comps:
      return
    seen.add(name)
    for line in comps[name][1:]:
      for callee in _called(line):
        visit(callee)
    order.append(name)

  for n in names:
    visit(n)
  return order


def array_shapes(shape: str) -> List[Tuple[str, List[int], str]]:
  """[(element type, dims, layout)] of an array or tuple shape string."""
  return [(t, [int(d) for d in dims.split(",") if d], layout or "")
          for t, dims, layout in _ARRAY.findall(shape)]


def _padded_elements(dims: List[int], layout: str) -> int:
  """Elements of an array as its layout's first tile pads it: the tile's dimensions cover
  the most minor dimensions in the layout's order (minor_to_major before the colon)."""
  n = 1
  for d in dims:
    n *= d
  if not dims or ":" not in layout or "T(" not in layout:
    return n
  minor_to_major, tiling = layout.split(":", 1)
  order = [int(x) for x in minor_to_major.split(",") if x.strip()]
  tile = re.search(r"T\(([\d,]+)\)", tiling)
  if not order or not tile:
    return n
  tile_dims = [int(x) for x in tile.group(1).split(",")]
  padded = list(dims)
  for t, axis in zip(reversed(tile_dims), order):  # the tile's last entry is the most minor
    padded[axis] = -(-padded[axis] // t) * t
  total = 1
  for d in padded:
    total *= d
  return total


def shape_bytes(shape: str, padded: bool = False) -> int:
  """Bytes of a shape string: logical sizes, or as its layouts' tiles pad it."""
  total = 0
  for element, dims, layout in array_shapes(shape):
    n = _padded_elements(dims, layout) if padded else _count(dims)
    total += n * ELEMENT_BYTES.get(element, 4)
  return total


def _count(dims):
  n = 1
  for d in dims:
    n *= d
  return n


def _padding(shape: str) -> float:
  logical = shape_bytes(shape)
  return shape_bytes(shape, padded=True) / logical if logical else 1.0


def _off_chip(shape: str) -> float:
  """The fraction of a shape's padded bytes in the default memory space (HBM on a TPU;
  `S(1)` in a layout is the TPU's on-chip VMEM, `S(2)` its scalar memory)."""
  total = shape_bytes(shape, padded=True)
  if not total:
    return 1.0
  off = sum(_padded_elements(dims, layout) * ELEMENT_BYTES.get(element, 4)
            for element, dims, layout in array_shapes(shape)
            if not re.search(r"S\([1-9]\)", layout))
  return off / total


def instruction_module(instr: Instruction, shapes: Dict[str, str], comps) -> str:
  """An HLO module holding `instr` alone: its operands as parameters, its callees along."""
  params, renamed = [], {}
  for i, operand in enumerate(dict.fromkeys(instr.operands)):
    renamed[operand] = f"p.{i}"
    params.append(f"  %p.{i} = {shapes[operand]} parameter({i})")
  line = re.sub(r"%([\w.\-]+)", lambda m: "%" + renamed.get(m.group(1), m.group(1)),
                instr.line.replace("ROOT ", "", 1))
  line = "  ROOT " + line.strip()
  callees = _with_callees(_called(instr.line), comps)
  body = ["\n".join(comps[c]) for c in callees]
  return "\n".join(["HloModule single", *body, "ENTRY %single {", *params, line, "}", ""])


def hlo_cost_analysis(module) -> Dict[str, float]:
  """XLA's HloCostAnalysis of an HloModule (from `compiler_ir("hlo")` or an executable)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  return xla_client._xla.hlo_module_cost_analysis(  # pylint: disable=protected-access
      jax.devices("cpu")[0].client, module)


def _analyse(module_text: str) -> Optional[Dict[str, float]]:
  from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
  try:
    return hlo_cost_analysis(xla_client.hlo.hlo_module_from_text(module_text))
  except Exception:  # pylint: disable=broad-except  (an instruction that stands alone badly)
    return None


def instruction_costs(hlo_text: str) -> List[dict]:
  """One row per top-level instruction of the entry computation: opcode, op_name, FLOPs,
  bytes accessed (XLA's count, and as the tile padding scales each operand and output),
  and `source`: "xla" (HloCostAnalysis of the instruction alone) or "shapes" (its
  operands' and output's sizes, where the instruction does not stand alone)."""
  comps, entry = computations(hlo_text)
  instrs = [i for i in map(parse_instruction, comps[entry][1:]) if i is not None]
  shapes = {i.name: i.shape for i in instrs}
  by_name = {i.name: i for i in instrs}
  names = {}

  def op_name(instr, depth=0):
    """Its metadata's op_name, or (copies that layout assignment inserted have none) that
    of the instruction whose result it takes."""
    if instr.name not in names:
      own = instr.op_name
      if not own and depth < 50:
        for o in instr.operands:
          if o in by_name and (own := op_name(by_name[o], depth + 1)):
            break
      names[instr.name] = own
    return names[instr.name]

  rows = []
  for instr in instrs:
    row = {"name": instr.name, "opcode": instr.opcode, "op_name": op_name(instr),
           "own_metadata": bool(instr.op_name), "flops": 0.0, "bytes": 0.0,
           "padded_bytes": 0.0, "off_chip_padded_bytes": 0.0, "source": "free"}
    if instr.opcode not in FREE:
      operand_shapes = [shapes[o] for o in dict.fromkeys(instr.operands)]
      cost = _analyse(instruction_module(instr, shapes, comps))
      if _LIBRARY_CALL.search(instr.line):  # counted as nothing by the analysis
        cost = None
      if cost is not None:
        # (XLA's bytes, tile padding, fraction off chip) per operand, and for the output.
        parts = [(cost.get(f"bytes accessed{k}{{}}", 0.0), _padding(s), _off_chip(s))
                 for k, s in enumerate(operand_shapes)]
        parts.append((sum(v for k, v in cost.items() if k.startswith("bytes accessedout")),
                      _padding(instr.shape), _off_chip(instr.shape)))
        row.update(flops=float(cost.get("flops", 0.0)),
                   bytes=float(cost.get("bytes accessed", 0.0)),
                   padded_bytes=float(sum(b * p for b, p, _ in parts)),
                   off_chip_padded_bytes=float(sum(b * p * o for b, p, o in parts)),
                   source="xla")
      else:  # a library call, or an async op's end (its start holds the operand: what it
        # writes, as XLA counts)
        result = instr.shape
        if _LIBRARY_CALL.search(instr.line) and result.startswith("("):
          result = "%s[%s]{%s}" % tuple(  # the result, not the scratch space beside it
              [array_shapes(result)[0][0], ",".join(map(str, array_shapes(result)[0][1])),
               array_shapes(result)[0][2]])
        sizes = ([] if instr.opcode.endswith("-done") else operand_shapes) + [result]
        row.update(bytes=float(sum(shape_bytes(s) for s in sizes)),
                   padded_bytes=float(sum(shape_bytes(s, True) for s in sizes)),
                   off_chip_padded_bytes=float(sum(shape_bytes(s, True) * _off_chip(s)
                                                   for s in sizes)),
                   source="shapes")
    rows.append(row)
  return rows
