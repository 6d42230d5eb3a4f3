"""A traced JAX function as an ONNX graph: the converter behind `sfmnet-export --format=onnx`.

`to_onnx(fn, example)` traces `fn(x)` (its parameters closed over, so they
become the graph's initializers) with a symbolic batch size, and writes one
ONNX node (or a few) per primitive of the jaxpr, opset 18, float32:
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
"""

from typing import Any, Dict, List, Optional

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sfmnet_jax.export.onnx_ops import (ONNX_TYPES, StructuralOps, UnsupportedPrimitive, Value,
                                        identity_perm)

OPSET = 18
BATCH = "batch"
FOLD_LIMIT = 1 << 22  # constant-fold results up to this many elements

_UNARY = {"abs": "Abs", "cos": "Cos", "sin": "Sin", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "logistic": "Sigmoid", "neg": "Neg", "tanh": "Tanh", "floor": "Floor", "ceil": "Ceil",
          "sign": "Sign", "not": "Not", "atan": "Atan"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
           "pow": "Pow", "ge": "GreaterOrEqual", "gt": "Greater", "le": "LessOrEqual",
           "lt": "Less", "eq": "Equal", "and": "And", "or": "Or"}
_COMPOSITE = {"ne": "_ne", "select_n": "_select", "atan2": "_atan2", "is_finite": "_is_finite_of",
              "cast": "_cast", "integer_pow": "_integer_pow_of", "square": "_square_of",
              "rsqrt": "_rsqrt_of"}
_IDENTITY = {"stop_gradient", "copy", "copy_p", "optimization_barrier"}
_INLINE = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
           "remat": "jaxpr", "checkpoint": "jaxpr"}


def _is_literal(v) -> bool:
  return isinstance(v, jax.extend.core.Literal)


class _Converter(StructuralOps):

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
    if prim in _UNARY or prim in _BINARY or prim in _COMPOSITE:
      return [self.elementwise(prim, ins, avals[0], params)]
    handler = getattr(self, f"_{prim}", None)
    if handler is None:
      raise UnsupportedPrimitive(f"the ONNX export has no conversion for JAX's {prim!r}")
    return handler(ins, params, avals)

  def foldable(self, ins, avals) -> bool:
    return (all(v.array is not None for v in ins)
            and all(all(isinstance(d, int) for d in a.shape) for a in avals)
            and sum(int(np.prod(a.shape)) for a in avals) <= FOLD_LIMIT)

  def elementwise(self, prim, ins, aval, params) -> Value:
    """Elementwise ops, in the layout of their first whole input (lazy and scalar inputs
    broadcast); the result is lazy if no input is whole."""
    rank = len(aval.shape)
    whole = [v for v in ins if not v.lazy and len(v.shape) == rank
             and tuple(v.shape) == tuple(aval.shape)]
    perm = (whole[0].perm if whole else None) or identity_perm(rank)
    names = [self.get(v, perm if len(v.shape) == rank else None) for v in ins]
    if prim in _UNARY:
      name = self.node(_UNARY[prim], names)
    elif prim in _BINARY:
      name = self.node(_BINARY[prim], names)
    else:
      name = getattr(self, _COMPOSITE[prim])(names, ins, params, aval)
    return Value(aval.shape, aval.dtype, name, lazy=not whole,
                  perm=None if perm == identity_perm(rank) else perm, origin=(prim, tuple(ins)))

  def _ne(self, names, ins, params, aval):
    return self.node("Not", [self.node("Equal", names)])

  def _select(self, names, ins, params, aval):
    if len(names) != 3:
      raise UnsupportedPrimitive("select_n with more than two cases")
    slope = _prelu_slope(*ins)
    if slope is not None:  # where(x >= 0, x, a * x) with a constant a: LeakyRelu(alpha=a),
      # which runtimes fuse into the convolution before it (Where is slow in runtimes)
      return self.node("LeakyRelu", [names[2]], alpha=float(slope.array.reshape(-1)[0]))
    pred = names[0]
    if np.dtype(ins[0].dtype) != np.bool_:
      pred = self.node("Cast", [pred], to=TensorProto.BOOL)
    return self.node("Where", [pred, names[2], names[1]])

  def _atan2(self, names, ins, params, aval):
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

  def _is_finite_of(self, names, ins, params, aval):
    return self.node("Less", [self.node("Abs", names), self.constant(np.float32(np.inf))])

  def _cast(self, names, ins, params, aval):
    to = np.dtype(params["new_dtype"])
    if to not in ONNX_TYPES:
      raise UnsupportedPrimitive(f"convert_element_type to {to}")
    return self.node("Cast", names, to=ONNX_TYPES[to])

  def _integer_pow_of(self, names, ins, params, aval):
    exponent = self.constant(np.asarray(params["y"], np.dtype(aval.dtype)))
    return self.node("Pow", [names[0], exponent])

  def _square_of(self, names, ins, params, aval):
    return self.node("Mul", [names[0], names[0]])

  def _rsqrt_of(self, names, ins, params, aval):
    return self.node("Reciprocal", [self.node("Sqrt", names)])

  # Structural primitives (one method each, named after the primitive).
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


def _input_dims(shape):
  return [d if isinstance(d, int) else BATCH for d in shape]


def to_onnx(fn, example_shape, output_names, *, input_name="lr_up", dynamic_batch=True,
            doc: str = "") -> onnx.ModelProto:
  """The ONNX model of `fn(x)` for float32 inputs shaped `example_shape` (NHWC).

  With `dynamic_batch` the first axis is the symbolic dimension "batch"; `fn`'s
  outputs (a tuple) are named `output_names`.
  """
  shape = tuple(example_shape)
  batch = jax.export.symbolic_shape("b")[0] if dynamic_batch else None
  if dynamic_batch:
    shape = (batch,) + shape[1:]
  closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(shape, jnp.float32))
  conv = _Converter(batch)
  if dynamic_batch:
    conv.batch_tensor = conv.node("Shape", [input_name], start=0, end=1)
  inp = Value(shape, np.dtype(np.float32), input_name)
  outs = conv.run(closed.jaxpr, closed.consts, [inp])
  outputs = []
  for name, value, aval in zip(output_names, outs, closed.out_avals):
    conv.nodes.append(helper.make_node("Identity", [conv.get(value, full=True)], [name]))
    outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                 _input_dims(aval.shape)))
  graph = helper.make_graph(
      conv.nodes, "sfmnet", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                           _input_dims(shape))],
      outputs, conv.initializers)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                            producer_name="sfmnet_jax", doc_string=doc)
  model.ir_version = 8
  onnx.checker.check_model(model)
  return model


def input_output(model: onnx.ModelProto) -> Dict[str, Any]:
  """{'inputs': [(name, dims)], 'outputs': [...]} of a model (dims: ints or 'batch')."""
  def dims(v):
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
  return {"inputs": [(v.name, dims(v)) for v in model.graph.input],
          "outputs": [(v.name, dims(v)) for v in model.graph.output]}
