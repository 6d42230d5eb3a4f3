"""The ONNX converter and the export's spectral seam, against closed forms and JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest

from sfmnet_jax.export import onnx_graph, onnx_model, spectral
from sfmnet_jax.model import blocks, layers


def _run(fn, x, outputs=("y",), dynamic=True):
  model = onnx_model.to_onnx(fn, x.shape, outputs, input_name="x", dynamic_batch=dynamic)
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  return session.run(None, {"x": x}), model


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (64, 64), (128, 128), (16, 40)])
def test_dft_products_equal_the_fft_to_float32_rounding(size):
  """rfft2 and |irfft2| as matrix products against numpy's float64 FFT: errors of float32
  sums (a few eps times the sum of |x|), no more."""
  h, w = size
  rng = np.random.default_rng(h * w)
  y = rng.standard_normal((2, h, w, 3)).astype(np.float32)
  want = np.fft.rfft2(y.astype(np.float64), axes=(1, 2)).transpose(0, 3, 1, 2)
  got = spectral.rfft2(jnp.asarray(y))
  bound = 8 * np.finfo(np.float32).eps * np.abs(y).sum(axis=(1, 2)).max()
  assert np.abs(np.asarray(got.re) - want.real).max() < bound
  assert np.abs(np.asarray(got.im) - want.imag).max() < bound
  # The real parts of bin 0 and of the Nyquist bins are exactly real sums: no sine term.
  assert np.all(np.asarray(got.im)[:, :, 0, 0] == 0)
  z = rng.standard_normal(want.shape) + 1j * rng.standard_normal(want.shape)
  back = np.abs(np.fft.irfft2(z.transpose(0, 2, 3, 1), s=size, axes=(1, 2)))
  got = spectral.irfft2_magnitude(jnp.asarray(z.real, jnp.float32),
                                  jnp.asarray(z.imag, jnp.float32), size)
  assert np.abs(np.asarray(got) - back).max() < 8 * np.finfo(np.float32).eps * np.abs(z).sum(
      axis=(2, 3)).max() / (h * w) * 4


def test_exportable_freq_block_equals_the_plain_block():
  """A FreqBlock whose transforms are DFT products gives the plain block's values, and the
  same parameters (the seam changes no name)."""
  block = blocks.FreqBlock(8)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
  variables = block.init(jax.random.key(1), x)
  plain = block.apply(variables, x)
  exported = spectral.exportable(block)
  assert jax.tree_util.tree_structure(exported.init(jax.random.key(1), x)) == \
      jax.tree_util.tree_structure(variables)
  np.testing.assert_allclose(exported.apply(variables, x), plain, atol=2e-5)


def test_atan2_in_onnx_equals_ieee_atan2_on_every_quadrant_and_signed_zero():
  x = np.array([1.0, -1.0, -1.0, 1.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 2.0, -2.0, -3.0, -3.0,
                1e-30, -1e-30, 5.0, 0.0], np.float32)
  y = np.array([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, -0.0, -0.0, 3.0, -3.0, 0.0, 0.0, 1e-7, -1e-7,
                1.0, 1.0, -0.0, 1e-38], np.float32)
  xy = np.stack([y, x])[None]  # (1, 2, n)
  (got,), _ = _run(lambda t: jnp.arctan2(*jnp.split(t, 2, axis=1)).reshape(t.shape[0], -1), xy)
  want = np.arctan2(y, x)
  np.testing.assert_allclose(got[0], want, rtol=2e-7, atol=0)
  # atan2(+-0, x < 0) is +-pi: the side of the phase jump follows the sign of the zero.
  assert got[0][5] == np.float32(np.pi) and got[0][7] == np.float32(-np.pi)
  rng = np.random.default_rng(0)
  many = rng.standard_normal((3, 2, 1000)).astype(np.float32)
  (got,), _ = _run(lambda t: jnp.arctan2(*jnp.split(t, 2, axis=1)).reshape(t.shape[0], -1), many)
  np.testing.assert_allclose(got, np.arctan2(many[:, 0], many[:, 1]), rtol=0, atol=5e-7)


def test_layers_convert_with_batch_free_shapes_and_layouts():
  """A conv stack with PReLU, pixel (un)shuffle, reductions over transposed layouts, a
  batched matmul and an einsum the converter writes as Einsum: equal to JAX at batch 1
  and 3 from one graph."""
  down, up = layers.Down(8), layers.Up(8)
  x = np.random.default_rng(1).random((1, 16, 16, 8), np.float32)
  dv = down.init(jax.random.key(0), x)
  uv = up.init(jax.random.key(1), down.apply(dv, x))

  def fn(t):
    d = down.apply(dv, t)
    u = up.apply(uv, d)
    s = jnp.sum(jnp.transpose(u, (0, 3, 1, 2)), axis=(2,))  # reduce over a moved axis
    att = jnp.einsum("bhc,bhd->bcd", u.reshape(u.shape[0], -1, 8), u.reshape(u.shape[0], -1, 8))
    odd = jnp.einsum("bij,jk->bki", att, jnp.eye(8))  # not a MatMul pattern
    return u, s, jnp.max(odd, axis=-1)

  (u, s, m), model = _run(fn, x, ("u", "s", "m"))
  ops = {n.op_type for n in model.graph.node}
  assert {"LeakyRelu", "Conv", "Einsum", "MatMul"} <= ops and "Where" not in ops
  want = fn(x)
  for got, ref in zip((u, s, m), want):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  x3 = np.random.default_rng(2).random((3, 16, 16, 8), np.float32)
  (u3, _, _), _ = _run(fn, x3, ("u", "s", "m"))  # another batch size, same graph shape
  np.testing.assert_allclose(u3, fn(x3)[0], rtol=1e-5, atol=1e-5)


def test_nan_to_num_and_selects_keep_jaxs_values_on_non_finite_input():
  x = np.array([[[[np.nan, np.inf, -np.inf, 1.0]]]], np.float32)
  (got,), _ = _run(lambda t: layers.nan_to_num(t * 2.0), x)
  np.testing.assert_array_equal(got, np.asarray(layers.nan_to_num(jnp.asarray(x) * 2.0)))


def test_a_primitive_without_conversion_is_an_error_naming_it():
  with pytest.raises(onnx_graph.UnsupportedPrimitive, match="'sort'"):
    onnx_model.to_onnx(lambda t: jnp.sort(t, axis=-1), (1, 4, 4, 3), ("y",))


def test_slices_in_a_fixed_batch_graph():
  x = np.random.default_rng(3).random((2, 8, 6, 4), np.float32)
  fn = lambda t: (t[:, 1:7:2, ::2] * 2.0, jnp.transpose(t, (0, 3, 1, 2))[:, :, :3])  # noqa: E731
  got, model = _run(fn, x, ("a", "b"), dynamic=False)
  assert "Slice" in {n.op_type for n in model.graph.node}
  for g, w in zip(got, fn(x)):
    np.testing.assert_array_equal(g, np.asarray(w))
