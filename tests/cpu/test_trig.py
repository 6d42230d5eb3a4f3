"""The plugin's polynomial atan2 / sin / cos (FreqBlock.polar and .cartesian on XLA:CPU)
against numpy's float64 functions and torch.angle's conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfmnet_jax.cpu import trig


def test_atan2_matches_float64_on_all_quadrants_and_axes():
  rng = np.random.default_rng(0)
  y = np.concatenate([rng.normal(size=20000) * 10.0 ** rng.integers(-6, 6, 20000),
                      [0.0, -0.0, 0.0, -0.0, 1.0, -1.0, 0.0, -0.0, 1e-38, -1e-38]])
  x = np.concatenate([rng.normal(size=20000) * 10.0 ** rng.integers(-6, 6, 20000),
                      [0.0, 0.0, -0.0, -0.0, 0.0, 0.0, 1.0, -1.0, -1.0, -1.0]])
  y, x = y.astype(np.float32), x.astype(np.float32)
  got = np.asarray(jax.jit(trig.atan2)(y, x))
  want = np.arctan2(y.astype(np.float64), x.astype(np.float64))
  np.testing.assert_allclose(got, want, atol=5e-7, rtol=0)
  # Signed zeros as torch.angle / atan2 give them (0, pi, -0, -pi at the origin).
  np.testing.assert_array_equal(np.signbit(got), np.signbit(np.arctan2(y, x)))


def test_sin_cos_match_float64():
  x = np.linspace(-200.0, 200.0, 100001, dtype=np.float32)
  s, c = jax.jit(trig.sin_cos)(x)
  np.testing.assert_allclose(s, np.sin(x.astype(np.float64)), atol=3e-7, rtol=0)
  np.testing.assert_allclose(c, np.cos(x.astype(np.float64)), atol=3e-7, rtol=0)


def test_polar_and_cartesian_values_and_gradients():
  rng = np.random.default_rng(1)
  z = (rng.normal(size=(4, 9)) + 1j * rng.normal(size=(4, 9))).astype(np.complex64)
  z[0, 0] = 0  # an exactly-zero bin: finite (zero) gradients, torch's values

  def plain(z):
    return jnp.abs(z), jnp.angle(z)

  amp, pha = jax.jit(trig.polar)(z)
  want_amp, want_pha = plain(z)
  np.testing.assert_allclose(amp, want_amp, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(pha, want_pha, atol=5e-7, rtol=0)
  re, im = jax.jit(trig.cartesian)(amp, pha)
  np.testing.assert_allclose(re + 1j * np.asarray(im), z, atol=2e-6)

  def loss(fn, re_im):
    a, p = fn(jax.lax.complex(re_im[0], re_im[1]))
    return jnp.sum(a * 0.3 + p * 0.7)

  args = jnp.stack([jnp.real(z), jnp.imag(z)])
  g = jax.grad(lambda t: loss(trig.polar, t))(args)
  assert np.all(np.isfinite(g))
  assert np.all(np.asarray(g)[:, 0, 0] == 0)
  safe = args.at[:, 0, 0].set(1.0)
  g_plain = jax.grad(lambda t: loss(plain, t))(safe)
  g_poly = jax.grad(lambda t: loss(trig.polar, t))(safe)
  np.testing.assert_allclose(g_poly, g_plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["polar", "cartesian"])
def test_freq_block_uses_them_only_through_the_plugin(method):
  """The plain FreqBlock calls jnp.angle / sin / cos; the accelerated one the polynomials
  (same outputs to float32 accuracy at a stable input)."""
  from sfmnet_jax.cpu import accelerate
  from sfmnet_jax.model.blocks import FreqBlock
  calls = []
  original = getattr(trig, method)

  def counting(*a):
    calls.append(method)
    return original(*a)

  block = FreqBlock(8)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 8)), jnp.float32)
  variables = block.init(jax.random.key(0), x)
  plain = block.apply(variables, x)
  assert not calls
  fast = accelerate(block, "kernels")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trig, method, counting)
    out = fast.apply(variables, x)
  assert calls == [method]
  np.testing.assert_allclose(out, plain, atol=1e-4, rtol=1e-4)
  calls.clear()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trig, method, counting)
    exact = accelerate(block, "kernels", trig="xla").apply(variables, x)
  assert not calls  # trig="xla": XLA's angle / sin / cos, as the plain block
  np.testing.assert_allclose(exact, plain, atol=1e-4, rtol=1e-4)
