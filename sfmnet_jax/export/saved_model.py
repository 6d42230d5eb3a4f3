"""SFMNet as a TensorFlow SavedModel (jax2tf, native serialization) with a serving signature.

The SavedModel holds the plain Flax generator lowered to StableHLO (TensorFlow
runs it with XLA through its `XlaCallModule` op: the same FFTs and numerics as
JAX on the CPU, no export seam needed) and its parameters as variables. Its
`serving_default` signature takes `lr_up` (B, H, W, 3) float32 and returns
`{"img_out", "img_fre"}`; TF Serving serves it as it is (docs/deploy.md).
"""

import numpy as np

SIGNATURE = "serving_default"


def save(model, variables, path: str, size, batch=None) -> None:
  """Writes the SavedModel of `model.apply(variables, lr_up)` at `size` (H, W) to `path`.

  `batch` None: any batch size (a polymorphic dimension); an int: that one.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  h, w = size
  params = jax.tree_util.tree_map(np.asarray, variables)
  batch_dim = "b" if batch is None else str(batch)
  converted = jax2tf.convert(lambda p, x: model.apply(p, x), with_gradient=False,
                             polymorphic_shapes=[None, f"({batch_dim}, {h}, {w}, 3)"])
  module = tf.Module()
  module.params = tf.nest.map_structure(tf.Variable, params)

  @tf.function(input_signature=[tf.TensorSpec([batch, h, w, 3], tf.float32, name="lr_up")],
               autograph=False)
  def serve(lr_up):
    img_out, img_fre = converted(module.params, lr_up)
    return {"img_out": img_out, "img_fre": img_fre}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={SIGNATURE: serve})


def load(path: str):
  """A callable lr_up -> (img_out, img_fre) (numpy) over the SavedModel's serving signature."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  signature = tf.saved_model.load(path).signatures[SIGNATURE]

  def run(lr_up):
    out = signature(lr_up=tf.constant(np.asarray(lr_up, np.float32)))
    return out["img_out"].numpy(), out["img_fre"].numpy()

  return run
