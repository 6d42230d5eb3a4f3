"""A traced JAX function as an ONNX model (`to_onnx`), and the SFMNet export recipe
(`sfmnet_to_onnx`): `fn(x)` is traced with its parameters closed over (they become the
graph's initializers) and a symbolic batch size, converted by `onnx_graph._Converter`,
given named inputs and outputs, opset 18, and checked by ONNX's checker."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper

from sfmnet_jax.export import onnx_runtime
from sfmnet_jax.export.onnx_graph import BATCH, OPSET, Value, _Converter  # pylint: disable=protected-access
from sfmnet_jax.export.spectral import exportable


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


def sfmnet_to_onnx(model, variables, size=(128, 128), batch=None, doc: str = "") -> onnx.ModelProto:
  """The ONNX graph of an SFMNet generator with its variables (`spectral.exportable`, traced
  by `to_onnx`): input `lr_up` (NHWC, `size`), outputs `img_out`, `img_fre`; a fixed
  `batch`, or None for a dynamic one."""
  exported = exportable(model)
  return to_onnx(lambda t: exported.apply(variables, t), (batch or 1, *size, 3),
                 onnx_runtime.OUTPUTS, input_name=onnx_runtime.INPUT,
                 dynamic_batch=batch is None, doc=doc)
