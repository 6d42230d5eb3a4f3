"""The structural primitives of the ONNX converter (`onnx_graph.py`): one method each,
named after the JAX primitive, plus the value record both files share.

Layouts: a value's tensor may hold it transposed (`Value.perm`), so that the
NCHW results of ONNX's Conv flow through elementwise ops, reductions, splits,
concatenations and JAX's own transposes without transposing back; reshapes,
matrix products and the graph's outputs take JAX's layout.
"""

import dataclasses
from typing import Any, Dict, Optional

import numpy as np
from onnx import TensorProto

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


class StructuralOps:
  """Mixed into the converter, which provides `node`, `constant`, `get`, `shape_tensor`
  and `elementwise`."""

  def _convert_element_type(self, ins, params, avals):
    if np.dtype(params["new_dtype"]) == np.dtype(ins[0].dtype):
      return [ins[0]]
    return [self.elementwise("cast", ins, avals[0], params)]

  def _broadcast_in_dim(self, ins, params, avals):
    shape, dims = avals[0].shape, params["broadcast_dimensions"]
    operand = ins[0]
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
      expanded[d] = operand.shape[i]
    if operand.array is not None and all(isinstance(d, int) for d in expanded):
      return [Value(shape, avals[0].dtype, array=operand.array.reshape(expanded), lazy=True)]
    name = self.node("Reshape", [self.get(operand, full=True), self.shape_tensor(expanded)])
    return [Value(shape, avals[0].dtype, name, lazy=True)]

  def _reshape(self, ins, params, avals):
    if params.get("dimensions"):
      raise UnsupportedPrimitive("reshape with dimensions")
    name = self.node("Reshape", [self.get(ins[0], full=True),
                                 self.shape_tensor(params["new_sizes"])])
    return [Value(avals[0].shape, avals[0].dtype, name)]

  def _squeeze(self, ins, params, avals):
    axes = self.constant(np.array(params["dimensions"], np.int64))
    return [Value(avals[0].shape, avals[0].dtype,
                   self.node("Squeeze", [self.get(ins[0], full=True), axes]))]

  def _expand_dims(self, ins, params, avals):
    axes = self.constant(np.array(params["dimensions"], np.int64))
    return [Value(avals[0].shape, avals[0].dtype,
                   self.node("Unsqueeze", [self.get(ins[0], full=True), axes]))]

  def _transpose(self, ins, params, avals):
    """No node: the tensor stays as it is, with the composed layout."""
    x = ins[0]
    if x.lazy:
      x = Value(x.shape, x.dtype, self.get(x, x.perm, full=True), perm=x.perm)
    have = x.perm or identity_perm(len(x.shape))
    inverse = np.argsort(params["permutation"])
    perm = tuple(int(inverse[i]) for i in have)
    return [Value(avals[0].shape, avals[0].dtype, x.name,
                   perm=None if perm == identity_perm(len(perm)) else perm)]

  def _common_perm(self, ins, rank):
    return next((v.perm for v in ins if v.name is not None and not v.lazy), None) or \
        identity_perm(rank)

  def _concatenate(self, ins, params, avals):
    rank = len(avals[0].shape)
    perm = self._common_perm(ins, rank)
    name = self.node("Concat", [self.get(v, perm, full=True) for v in ins],
                     axis=int(np.argsort(perm)[params["dimension"]]))
    return [Value(avals[0].shape, avals[0].dtype, name,
                   perm=None if perm == identity_perm(rank) else perm)]

  def _split(self, ins, params, avals):
    rank = len(avals[0].shape)
    perm = self._common_perm(ins, rank)
    sizes = self.constant(np.array(params["sizes"], np.int64))
    names = self.node("Split", [self.get(ins[0], perm, full=True), sizes], n_out=len(avals),
                      axis=int(np.argsort(perm)[params["axis"]]))
    names = names if isinstance(names, list) else [names]
    return [Value(a.shape, a.dtype, n, perm=None if perm == identity_perm(rank) else perm)
            for a, n in zip(avals, names)]

  def _slice(self, ins, params, avals):
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
                   perm=None if have == identity_perm(rank) else have)]

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
                   perm=None if perm == identity_perm(len(perm)) else perm)]

  def _reduce_sum(self, ins, params, avals):
    return self._reduce("ReduceSum", ins, params, avals)

  def _reduce_max(self, ins, params, avals):
    return self._reduce("ReduceMax", ins, params, avals)

  def _conv_general_dilated(self, ins, params, avals):
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
                   perm=None if perm == identity_perm(len(perm)) else perm)]

  def _dot_general(self, ins, params, avals):
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
