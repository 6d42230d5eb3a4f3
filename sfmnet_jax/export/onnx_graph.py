"""A jaxpr as ONNX nodes: the converter behind `sfmnet-export --format=onnx`
(`onnx_model.to_onnx` traces the function and packages the model).

One ONNX node (or a few) per primitive of the jaxpr, opset 18, float32:
elementwise arithmetic and comparisons (with ONNX's broadcasting standing in
for `broadcast_in_dim` wherever a consumer broadcasts anyway), `atan2`
(ONNX has none: atan of the quotient with the quadrant from the operands'
sign bits, signed zeros included), convolutions (NHWC/HWIO transposed to
ONNX's NCHW/OIHW), `dot_general` (MatMul, Einsum otherwise), reductions,
reshapes, transposes, slices, concatenation, splits, selects and casts. Nested `jit`
and `custom_jvp` calls are inlined; whatever depends only on constants is
folded with JAX at export time. A primitive outside this set is an error
naming it. It covers the exportable SFMNet (`spectral.exportable`), not every
JAX program.

Layouts: a value's tensor may hold it transposed (`Value.perm`), so that the
NCHW results of ONNX's Conv flow through elementwise ops, reductions, splits,
concatenations and JAX's own transposes without transposing back; reshapes,
matrix products and the graph's outputs take JAX's layout. The converter has
one method per primitive, `prim_<name>(ins, params, avals) -> [Value]`.
"""

import dataclasses
from typing import Any, Dict, List, Optional

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from onnx import TensorProto, helper, numpy_helper


OPSET = 18
BATCH = "batch"
FOLD_LIMIT = 1 << 22  # constant-fold results up to this many elements

_UNARY = {"abs": "Abs", "cos": "Cos", "sin": "Sin", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "logistic": "Sigmoid", "neg": "Neg", "tanh": "Tanh", "floor": "Floor", "ceil": "Ceil",
          "sign": "Sign", "not": "Not", "atan": "Atan"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
           "pow": "Pow", "ge": "GreaterOrEqual", "gt": "Greater", "le": "LessOrEqual",
           "lt": "Less", "eq": "Equal", "and": "And", "or": "Or"}
_IDENTITY = {"stop_gradient", "copy", "copy_p", "optimization_barrier"}
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
           "remat": "jaxpr", "checkpoint": "jaxpr"}
ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
               np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
               np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.float16): TensorProto.FLOAT16}


class UnsupportedPrimitive(ValueError):
  """A primitive (or a form of one) the converter does not write; the message names it, and
  `sfmnet-export` reports it in one line like its other refusals."""


@dataclasses.dataclass(eq=False)
class Value:
  """A jaxpr value in the graph: an ONNX tensor and/or a known numpy value.

  The tensor holds the value transposed by `perm` (None: as JAX lays it out), so
  that convolutions' NCHW results flow on without transposes back and forth.
  `lazy`: it is only broadcastable to the value's shape (a `broadcast_in_dim`
  whose consumers broadcast anyway), expanded where a consumer needs it whole.
  """
  shape: tuple
  dtype: Any
  name: Optional[str] = None
  array: Optional[np.ndarray] = None
  lazy: bool = False
  perm: Optional[tuple] = None
  cache: Dict[Any, str] = dataclasses.field(default_factory=dict)
  origin: Optional[tuple] = None  # (primitive, inputs) of an elementwise result


def identity_perm(n: int) -> tuple:
  return tuple(range(n))


def _layout(perm) -> Optional[tuple]:
  """A value's `perm`: None for JAX's own layout (the identity), else the permutation."""
  perm = tuple(perm)
  return None if perm == identity_perm(len(perm)) else perm


def _is_literal(v) -> bool:
  return isinstance(v, jax.extend.core.Literal)


class _Converter:
  """One conversion: the graph's nodes and initializers, written one primitive at a time."""

  def __init__(self, batch):
    self.batch = batch  # the batch dimension: a symbolic dim, or None (static shapes)
    self.nodes, self.initializers = [], []
    self.count = 0
    self.batch_tensor = None  # a 1-element int64 tensor holding the batch size
    self.shapes = {}  # shape tensors written so far, by shape

  def fresh(self, hint: str) -> str:
    self.count += 1
    return f"{hint}_{self.count}"

  def node(self, op: str, inputs: List[str], n_out: int = 1, **attrs):
    outs = [self.fresh(op.lower()) for _ in range(n_out)]
    self.nodes.append(helper.make_node(op, inputs, outs, **attrs))
    return outs[0] if n_out == 1 else outs

  def constant(self, array, hint="const") -> str:
    name = self.fresh(hint)
    self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
    return name

  def get(self, value: Value, perm=None, full: bool = False) -> str:
    """The value's tensor transposed by `perm` (None: JAX's layout); `full` expands a lazy
    broadcast to its whole shape. Constants become initializers."""
    rank = len(value.shape)
    perm = tuple(perm) if perm is not None else identity_perm(rank)
    key = (perm, full and value.lazy)
    if key in value.cache:
      return value.cache[key]
    if value.name is None:  # a constant, written in the layout asked for
      arr = value.array
      name = self.constant(np.transpose(arr, perm) if arr.ndim == rank and rank else arr)
    else:
      name, have = value.name, value.perm or identity_perm(rank)
      if rank and have != perm:
        name = self.node("Transpose", [name], perm=[int(i) for i in np.argsort(have)[list(perm)]])
    if full and value.lazy:
      name = self.node("Expand", [name, self.shape_tensor([value.shape[i] for i in perm])])
    value.cache[key] = name
    return name

  # Shapes, with the batch size read from the input at run time.
  def dim(self, d):
    if isinstance(d, (int, np.integer)):
      return int(d), None
    k = d // self.batch
    if not isinstance(k, int) or k * self.batch != d:
      raise UnsupportedPrimitive(f"dimension {d}: only multiples of the batch size are written")
    return None, k

  def shape_tensor(self, shape) -> str:
    key = tuple(str(d) for d in shape)
    if key not in self.shapes:
      self.shapes[key] = self._shape_tensor(shape)
    return self.shapes[key]

  def _shape_tensor(self, shape) -> str:
    dims = [self.dim(d) for d in shape]
    if all(k is None for _, k in dims):
      return self.constant(np.array([v for v, _ in dims], np.int64), "shape")
    parts = []
    for v, k in dims:
      if k is None:
        parts.append(self.constant(np.array([v], np.int64), "dim"))
      else:
        parts.append(self.batch_tensor if k == 1 else
                     self.node("Mul", [self.batch_tensor, self.constant(np.array([k], np.int64))]))
    return self.node("Concat", parts, axis=0)

  # The program.
  def run(self, jaxpr, consts, inputs: List[Value]) -> List[Value]:
    env = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = Value(tuple(np.shape(c)), np.asarray(c).dtype, array=np.asarray(c))
    for var, value in zip(jaxpr.invars, inputs):
      env[var] = value

    def read(v):
      if _is_literal(v):
        arr = np.asarray(v.val, dtype=v.aval.dtype)
        return Value(arr.shape, arr.dtype, array=arr)
      return env[v]

    for eqn in jaxpr.eqns:
      outs = self.equation(eqn, [read(v) for v in eqn.invars])
      for var, value in zip(eqn.outvars, outs):
        env[var] = value
    return [read(v) for v in jaxpr.outvars]

  def equation(self, eqn, ins: List[Value]) -> List[Value]:
    prim, params = eqn.primitive.name, eqn.params
    avals = [v.aval for v in eqn.outvars]
    if prim in _INLINE and _INLINE[prim] in params:
      closed = params[_INLINE[prim]]
      return self.run(getattr(closed, "jaxpr", closed), getattr(closed, "consts", ()), ins)
    if self.foldable(ins, avals):
      results = eqn.primitive.bind(*[jnp.asarray(v.array) for v in ins], **params)
      results = results if eqn.primitive.multiple_results else [results]
      return [Value(a.shape, a.dtype, array=np.asarray(r)) for a, r in zip(avals, results)]
    if prim in _IDENTITY:
      return [ins[0]]
    if prim in _UNARY or prim in _BINARY:
      op = _UNARY.get(prim) or _BINARY[prim]
      return [self.elementwise(prim, ins, avals[0], lambda names: self.node(op, names))]
    handler = getattr(self, f"prim_{prim}", None)
    if handler is None:
      raise UnsupportedPrimitive(f"the ONNX export has no conversion for JAX's {prim!r}")
    return handler(ins, params, avals)

  def foldable(self, ins, avals) -> bool:
    return (all(v.array is not None for v in ins)
            and all(all(isinstance(d, int) for d in a.shape) for a in avals)
            and sum(int(np.prod(a.shape)) for a in avals) <= FOLD_LIMIT)

  def elementwise(self, prim, ins, aval, build) -> Value:
    """An elementwise op, in the layout of its first whole input (lazy and scalar inputs
    broadcast): `build(input names)` writes its nodes and returns the result's name. The
    result is lazy if no input is whole."""
    rank = len(aval.shape)
    whole = [v for v in ins if not v.lazy and len(v.shape) == rank
             and tuple(v.shape) == tuple(aval.shape)]
    perm = (whole[0].perm if whole else None) or identity_perm(rank)
    names = [self.get(v, perm if len(v.shape) == rank else None) for v in ins]
    return Value(aval.shape, aval.dtype, build(names), lazy=not whole, perm=_layout(perm),
                 origin=(prim, tuple(ins)))

  # Elementwise primitives ONNX has no single node for.
  def prim_ne(self, ins, params, avals):
    return [self.elementwise("ne", ins, avals[0],
                             lambda names: self.node("Not", [self.node("Equal", names)]))]

  def prim_select_n(self, ins, params, avals):
    if len(ins) != 3:
      raise UnsupportedPrimitive("select_n with more than two cases")

    def build(names):
      slope = _prelu_slope(*ins)
      if slope is not None:  # where(x >= 0, x, a * x) with a constant a: LeakyRelu(alpha=a),
        # which runtimes fuse into the convolution before it (Where is slow in runtimes)
        return self.node("LeakyRelu", [names[2]], alpha=float(slope.array.reshape(-1)[0]))
      pred = names[0]
      if np.dtype(ins[0].dtype) != np.bool_:
        pred = self.node("Cast", [pred], to=TensorProto.BOOL)
      return self.node("Where", [pred, names[2], names[1]])

    return [self.elementwise("select_n", ins, avals[0], build)]

  def prim_atan2(self, ins, params, avals):
    return [self.elementwise("atan2", ins, avals[0], self._atan2)]

  def _atan2(self, names):
    """atan2(y, x) = atan(y / x) + pi * [x's sign bit] * (y's sign bit ? -1 : 1), in
    arithmetic (runtimes' Where is slow): a sign bit is 1/v < 0 (true for -0); for
    x = y = 0 the quotient is y / 1 (x - (0 - 1)), so atan2(+-0, +-0) is +-0 or +-pi as
    IEEE and XLA give; elsewhere x - (0 - 0) is x, its zero's sign kept. The only
    difference from atan2 is the sign of a zero result (+0 for -0 when x > 0)."""
    y, x = names
    f32 = lambda v: self.constant(np.float32(v))  # noqa: E731
    zero, one = f32(0.0), f32(1.0)

    def sign_bit(v):  # 1.0 where v < 0 or v is -0, else 0.0
      return self.node("Cast", [self.node("Less", [self.node("Div", [one, v]), zero])],
                       to=TensorProto.FLOAT)

    both_zero = self.node("Cast", [self.node("And", [self.node("Equal", [x, zero]),
                                                     self.node("Equal", [y, zero])])],
                          to=TensorProto.FLOAT)
    denominator = self.node("Sub", [x, self.node("Sub", [zero, both_zero])])
    base = self.node("Atan", [self.node("Div", [y, denominator])])
    direction = self.node("Sub", [one, self.node("Mul", [sign_bit(y), f32(2.0)])])
    offset = self.node("Mul", [self.node("Mul", [sign_bit(x), direction]), f32(np.pi)])
    return self.node("Add", [base, offset])

  def prim_is_finite(self, ins, params, avals):
    return [self.elementwise("is_finite", ins, avals[0], lambda names: self.node(
        "Less", [self.node("Abs", names), self.constant(np.float32(np.inf))]))]

  def prim_integer_pow(self, ins, params, avals):
    def build(names):
      exponent = self.constant(np.asarray(params["y"], np.dtype(avals[0].dtype)))
      return self.node("Pow", [names[0], exponent])
    return [self.elementwise("integer_pow", ins, avals[0], build)]

  def prim_square(self, ins, params, avals):
    return [self.elementwise("square", ins, avals[0],
                             lambda names: self.node("Mul", [names[0], names[0]]))]

  def prim_rsqrt(self, ins, params, avals):
    return [self.elementwise("rsqrt", ins, avals[0], lambda names: self.node(
        "Reciprocal", [self.node("Sqrt", names)]))]

  # Structural primitives.
  def prim_convert_element_type(self, ins, params, avals):
    to = np.dtype(params["new_dtype"])
    if to == np.dtype(ins[0].dtype):
      return [ins[0]]
    if to not in ONNX_TYPES:
      raise UnsupportedPrimitive(f"convert_element_type to {to}")
    return [self.elementwise("cast", ins, avals[0],
                             lambda names: self.node("Cast", names, to=ONNX_TYPES[to]))]

  def prim_broadcast_in_dim(self, ins, params, avals):
    shape, dims = avals[0].shape, params["broadcast_dimensions"]
    operand = ins[0]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
      expanded[d] = operand.shape[i]
    if operand.array is not None and all(isinstance(d, int) for d in expanded):
      return [Value(shape, avals[0].dtype, array=operand.array.reshape(expanded), lazy=True)]
    name = self.node("Reshape", [self.get(operand, full=True), self.shape_tensor(expanded)])
    return [Value(shape, avals[0].dtype, name, lazy=True)]

  def prim_reshape(self, ins, params, avals):
    if params.get("dimensions"):
      raise UnsupportedPrimitive("reshape with dimensions")
    name = self.node("Reshape", [self.get(ins[0], full=True),
                                 self.shape_tensor(params["new_sizes"])])
    return [Value(avals[0].shape, avals[0].dtype, name)]

  def prim_squeeze(self, ins, params, avals):
    axes = self.constant(np.array(params["dimensions"], np.int64))
    return [Value(avals[0].shape, avals[0].dtype,
                   self.node("Squeeze", [self.get(ins[0], full=True), axes]))]

  def prim_expand_dims(self, ins, params, avals):
    axes = self.constant(np.array(params["dimensions"], np.int64))
    return [Value(avals[0].shape, avals[0].dtype,
                   self.node("Unsqueeze", [self.get(ins[0], full=True), axes]))]

  def prim_transpose(self, ins, params, avals):
    """No node: the tensor stays as it is, with the composed layout."""
    x = ins[0]
    if x.lazy:
      x = Value(x.shape, x.dtype, self.get(x, x.perm, full=True), perm=x.perm)
    have = x.perm or identity_perm(len(x.shape))
    inverse = np.argsort(params["permutation"])
    perm = tuple(int(inverse[i]) for i in have)
    return [Value(avals[0].shape, avals[0].dtype, x.name,
                   perm=_layout(perm))]

  def _common_perm(self, ins, rank):
    return next((v.perm for v in ins if v.name is not None and not v.lazy), None) or \
        identity_perm(rank)

  def prim_concatenate(self, ins, params, avals):
    rank = len(avals[0].shape)
    perm = self._common_perm(ins, rank)
    name = self.node("Concat", [self.get(v, perm, full=True) for v in ins],
                     axis=int(np.argsort(perm)[params["dimension"]]))
    return [Value(avals[0].shape, avals[0].dtype, name,
                   perm=_layout(perm))]

  def prim_split(self, ins, params, avals):
    rank = len(avals[0].shape)
    perm = self._common_perm(ins, rank)
    sizes = self.constant(np.array(params["sizes"], np.int64))
    names = self.node("Split", [self.get(ins[0], perm, full=True), sizes], n_out=len(avals),
                      axis=int(np.argsort(perm)[params["axis"]]))
    names = names if isinstance(names, list) else [names]
    return [Value(a.shape, a.dtype, n, perm=_layout(perm))
            for a, n in zip(avals, names)]

  def prim_slice(self, ins, params, avals):
    x = ins[0]
    rank = len(x.shape)
    have = x.perm or identity_perm(rank)
    strides = params["strides"] or (1,) * rank
    where = np.argsort(have)  # logical axis -> physical axis
    const = lambda v: self.constant(np.array(v, np.int64))  # noqa: E731
    limits = [d if isinstance(d, int) else np.iinfo(np.int64).max  # a whole batch axis
              for d in params["limit_indices"]]
    name = self.node("Slice", [self.get(x, have, full=True), const(params["start_indices"]),
                               const(limits),
                               const([int(where[a]) for a in range(rank)]), const(strides)])
    return [Value(avals[0].shape, avals[0].dtype, name,
                   perm=_layout(have))]

  def _reduce(self, op, ins, params, avals):
    x = ins[0]
    rank = len(x.shape)
    have = x.perm or identity_perm(rank)
    axes = sorted(int(np.argsort(have)[a]) for a in params["axes"])
    name = self.node(op, [self.get(x, have, full=True),
                          self.constant(np.array(axes, np.int64))], keepdims=0)
    reduced = set(params["axes"])
    renumber = {d: d - sum(a < d for a in reduced) for d in range(rank) if d not in reduced}
    perm = tuple(renumber[d] for d in have if d not in reduced)
    return [Value(avals[0].shape, avals[0].dtype, name,
                   perm=_layout(perm))]

  def prim_reduce_sum(self, ins, params, avals):
    return self._reduce("ReduceSum", ins, params, avals)

  def prim_reduce_max(self, ins, params, avals):
    return self._reduce("ReduceMax", ins, params, avals)

  def prim_conv_general_dilated(self, ins, params, avals):
    """ONNX's Conv on the input in its spec's layout (NCHW for NHWC): the result stays NCHW."""
    lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
    if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
      raise UnsupportedPrimitive("conv_general_dilated with lhs dilation or batch groups")
    x = self.get(ins[0], lhs_spec, full=True)
    w = self.get(ins[1], rhs_spec, full=True)
    pads = [lo for lo, _ in params["padding"]] + [hi for _, hi in params["padding"]]
    y = self.node("Conv", [x, w], group=params["feature_group_count"], pads=pads,
                  strides=list(params["window_strides"]),
                  dilations=list(params["rhs_dilation"]))
    perm = tuple(int(d) for d in out_spec)
    return [Value(avals[0].shape, avals[0].dtype, y,
                   perm=_layout(perm))]

  def prim_dot_general(self, ins, params, avals):
    """MatMul where the contraction is one axis (with batch axes leading), Einsum otherwise."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    lhs, rhs = ins
    ln, rn = len(lhs.shape), len(rhs.shape)
    shape, dtype = avals[0].shape, avals[0].dtype
    nb = len(lb)
    batch_leading = tuple(lb) == tuple(range(nb)) and tuple(rb) == tuple(range(nb))
    if len(lc) == 1 and batch_leading:
      l_free = [d for d in range(nb, ln) if d != lc[0]]
      r_free = [d for d in range(nb, rn) if d != rc[0]]
      if nb == 0 and rn == 2 and lc[0] == ln - 1 and rc[0] == 0:  # x @ W
        return [Value(shape, dtype, self.node("MatMul", [self.get(lhs, full=True),
                                                          self.get(rhs, full=True)]))]
      if nb == 0 and ln == 2 and lc[0] == 1 and rn >= 2 and rc[0] == rn - 2:
        # W @ x over x's second-to-last axis: ONNX broadcasts W over x's leading axes and
        # gives (..., i, k), JAX's result is (i, ..., k): the same tensor, another layout.
        y = self.node("MatMul", [self.get(lhs, full=True), self.get(rhs, full=True)])
        perm = tuple(range(1, rn - 1)) + (0, rn - 1)
        return [Value(shape, dtype, y, perm=perm)]
      if len(l_free) == 1 and len(r_free) == 1:
        a = self.get(lhs, list(range(nb)) + l_free + [lc[0]], full=True)
        b = self.get(rhs, list(range(nb)) + [rc[0]] + r_free, full=True)
        return [Value(shape, dtype, self.node("MatMul", [a, b]))]
    a, b = self.get(lhs, full=True), self.get(rhs, full=True)
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs_l = [next(letters) for _ in range(ln)]
    rhs_l = [next(letters) for _ in range(rn)]
    for i, j in zip(list(lc) + list(lb), list(rc) + list(rb)):
      rhs_l[j] = lhs_l[i]
    out_l = ([lhs_l[i] for i in lb] + [lhs_l[i] for i in range(ln) if i not in lc + lb]
             + [rhs_l[j] for j in range(rn) if j not in rc + rb])
    eq = f"{''.join(lhs_l)},{''.join(rhs_l)}->{''.join(out_l)}"
    return [Value(shape, dtype, self.node("Einsum", [a, b], equation=eq))]


def _prelu_slope(pred: Value, if_false: Value, if_true: Value) -> Optional[Value]:
  """The slope `a` when select_n(pred, if_false, if_true) is where(x >= 0, x, a * x) with a
  constant `a` of one value (a PReLU), else None."""
  if pred.origin is None or pred.origin[0] != "ge" or if_false.origin is None:
    return None
  x, zero = pred.origin[1]
  if x is not if_true or zero.array is None or zero.array.size != 1 or zero.array.item() != 0:
    return None
  if if_false.origin[0] != "mul" or x not in if_false.origin[1]:
    return None
  a = [v for v in if_false.origin[1] if v is not x]
  if len(a) != 1 or a[0].array is None or a[0].array.size != 1:
    return None
  return a[0]
