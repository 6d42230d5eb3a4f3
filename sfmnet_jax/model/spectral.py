"""Fourier helpers shared by the frequency branch, the losses and D_fre.

All transforms run in float32 over the spatial axes (1, 2) of NHWC tensors,
with PyTorch's default normalisation (forward unscaled, inverse 1/(HW)).
`amplitude` and `phase` have finite gradients everywhere, including at an
exactly-zero spectrum bin (where |z| and angle(z) are not differentiable):
there both are 0, as `torch.abs` and `torch.angle` give, with a zero gradient.

Two ways to compute the same transforms (`TRANSFORMS`): "fft", `jnp.fft` (the
release's torch.fft; XLA's FFT on CPUs and GPUs), and "dft", products with
precomputed cosine and sine matrices along W then along H, channels kept
last (the layout of the convolutions around them). A TPU has no FFT unit: its
compiler turns an FFT into matrix products itself, in a channels-first layout
that costs a transpose of every feature map each way; "dft" is those products
written out, channels last. With `Precision.HIGHEST` (the default) the two
differ by float32 rounding (another summation order); a bfloat16 model's
FreqBlocks take `Precision.DEFAULT` (one bfloat16 pass on TPUs: the feature maps
they transform are bfloat16 already, and so is what they feed).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

AXES = (1, 2)
TRANSFORMS = ("fft", "dft")


def rfft2(x: jax.Array) -> jax.Array:
  """`torch.fft.rfft2` over H, W of an NHWC tensor: (B, H, W, C) -> (B, H, W//2+1, C)."""
  return jnp.fft.rfft2(x.astype(jnp.float32), axes=AXES)


def irfft2(z: jax.Array, size) -> jax.Array:
  """`torch.fft.irfft2(z, s=size)` over H, W of an NHWC complex tensor."""
  return jnp.fft.irfft2(z, s=tuple(size), axes=AXES)


def _nonzero(z):
  return (jnp.real(z) != 0) | (jnp.imag(z) != 0)


def amplitude(z: jax.Array) -> jax.Array:
  """|z| with a zero (not NaN) gradient at z == 0."""
  nonzero = _nonzero(z)
  return jnp.where(nonzero, jnp.abs(jnp.where(nonzero, z, 1)), 0.0)


def phase(z: jax.Array) -> jax.Array:
  """`jnp.angle(z)` (torch.angle's values) with a zero (not NaN) gradient at z == 0.

  At z == 0 the value is atan2 of the signed zeros (0 or pi, with their signs),
  as torch.angle gives.
  """
  nonzero = _nonzero(z)
  safe = jnp.where(nonzero, z, 1)
  return jnp.where(nonzero, jnp.angle(safe), jnp.angle(jax.lax.stop_gradient(z)))


def amplitude_phase(x: jax.Array):
  """Amplitude and phase of `rfft2(x)` (both float32, shape (B, H, W//2+1, C))."""
  z = rfft2(x)
  return amplitude(z), phase(z)


def _cos_sin(n: int, k: int, sign: float):
  """cos and sign*sin of 2 pi j m / n for j < n, m < k, float64, exact where j m is a
  multiple of n/4 (the angle a multiple of pi/2)."""
  jm = np.outer(np.arange(n), np.arange(k)) % n
  angle = 2 * np.pi * jm / n
  cos, sin = np.cos(angle), np.sin(angle)
  quarter = (4 * jm) % n == 0
  exact = np.round(4 * jm[quarter] / n).astype(int) % 4
  cos[quarter] = np.array([1.0, 0.0, -1.0, 0.0])[exact]
  sin[quarter] = np.array([0.0, 1.0, 0.0, -1.0])[exact]
  return cos, sign * sin


@functools.lru_cache(maxsize=32)
def dft_matrices(h: int, w: int):
  """The forward and inverse matrices of an (h, w) rfft2, float32 numpy.

  Forward, on (..., h, w) rows: along W `x @ fw_cos`, `x @ fw_sin` (w, w//2+1);
  along H `fh_cos @ t`, `fh_sin @ t` (h, h). Inverse: along H `ih_cos`, `ih_sin`
  (h, h, with 1/h), along W `iw_cos`, `iw_sin` (w//2+1, w, with 1/w, the doubled
  interior bins and zero rows for the imaginary parts of bins 0 and w/2, which every
  complex-to-real FFT ignores).
  """
  k = w // 2 + 1
  fw_cos, fw_sin = _cos_sin(w, k, -1.0)  # e^{-i t} = cos t - i sin t
  fh_cos, fh_sin = _cos_sin(h, h, -1.0)
  ih_cos, ih_sin = _cos_sin(h, h, +1.0)
  ih_cos, ih_sin = ih_cos / h, ih_sin / h
  iw_cos, iw_sin = _cos_sin(w, k, +1.0)
  weight = np.full(k, 2.0)
  weight[0] = 1.0
  if w % 2 == 0:
    weight[-1] = 1.0
  iw_cos = (iw_cos * weight / w).T  # (k, w)
  iw_sin = (iw_sin * weight / w).T
  iw_sin[0] = 0.0
  if w % 2 == 0:
    iw_sin[-1] = 0.0
  f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
  return {"fw_cos": f32(fw_cos), "fw_sin": f32(fw_sin), "fh_cos": f32(fh_cos),
          "fh_sin": f32(fh_sin), "ih_cos": f32(ih_cos), "ih_sin": f32(ih_sin),
          "iw_cos": f32(iw_cos), "iw_sin": f32(iw_sin)}


def rdft2(x: jax.Array, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """`rfft2` as DFT matrix products (see the module docstring), channels last."""
  m = dft_matrices(*x.shape[1:3])
  x = x.astype(jnp.float32)
  _product = functools.partial(jnp.einsum, precision=precision)
  a = _product("wk,bhwc->bhkc", m["fw_cos"], x)  # along W: a + i b
  b = _product("wk,bhwc->bhkc", m["fw_sin"], x)
  # Along H: (cos - i sin)(a + i b) with the sign in the matrices.
  re = _product("gh,bhkc->bgkc", m["fh_cos"], a) - _product("gh,bhkc->bgkc", m["fh_sin"], b)
  im = _product("gh,bhkc->bgkc", m["fh_cos"], b) + _product("gh,bhkc->bgkc", m["fh_sin"], a)
  return jax.lax.complex(re, im)


def irdft2(z: jax.Array, size, precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """`irfft2(z, s=size)` as DFT matrix products, channels last."""
  m = dft_matrices(*size)
  _product = functools.partial(jnp.einsum, precision=precision)
  re, im = jnp.real(z), jnp.imag(z)
  a = _product("gh,bhkc->bgkc", m["ih_cos"], re) - _product("gh,bhkc->bgkc", m["ih_sin"], im)
  b = _product("gh,bhkc->bgkc", m["ih_cos"], im) + _product("gh,bhkc->bgkc", m["ih_sin"], re)
  return _product("kw,bhkc->bhwc", m["iw_cos"], a) - _product("kw,bhkc->bhwc", m["iw_sin"], b)


def transforms(name: str, precision=jax.lax.Precision.HIGHEST):
  """(forward, inverse) of the transform `name` (one of TRANSFORMS); `precision` is the
  "dft" products'."""
  if name not in TRANSFORMS:
    raise ValueError(f"unknown spectral transform {name!r}; one of {TRANSFORMS}")
  if name == "fft":
    return rfft2, irfft2
  return (functools.partial(rdft2, precision=precision),
          functools.partial(irdft2, precision=precision))
