"""Fourier helpers shared by the frequency branch, the losses and D_fre.

All transforms run in float32 over the spatial axes (1, 2) of NHWC tensors,
with PyTorch's default normalisation (forward unscaled, inverse 1/(HW)).
`amplitude` and `phase` have finite gradients everywhere, including at an
exactly-zero spectrum (where |z| and angle(z) are not differentiable).
"""

import jax
import jax.numpy as jnp

AXES = (1, 2)


def rfft2(x: jax.Array) -> jax.Array:
  """`torch.fft.rfft2` over H, W of an NHWC tensor: (B, H, W, C) -> (B, H, W//2+1, C)."""
  return jnp.fft.rfft2(x.astype(jnp.float32), axes=AXES)


def irfft2(z: jax.Array, size) -> jax.Array:
  """`torch.fft.irfft2(z, s=size)` over H, W of an NHWC complex tensor."""
  return jnp.fft.irfft2(z, s=tuple(size), axes=AXES)


def amplitude(z: jax.Array) -> jax.Array:
  """|z| with a zero (not NaN) gradient at z == 0."""
  re, im = jnp.real(z), jnp.imag(z)
  sq = re * re + im * im
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def phase(z: jax.Array) -> jax.Array:
  """angle(z) = atan2(imag, real) with a zero (not NaN) gradient at z == 0.

  Forward values equal `torch.angle` everywhere (0 at z == 0).
  """
  re, im = jnp.real(z), jnp.imag(z)
  nonzero = (re != 0) | (im != 0)
  safe_re = jnp.where(nonzero, re, 1.0)
  safe_im = jnp.where(nonzero, im, 0.0)
  # At z == 0 keep torch's value (atan2 of signed zeros) but pass no gradient.
  at_zero = jax.lax.stop_gradient(jnp.arctan2(im, re))
  return jnp.where(nonzero, jnp.arctan2(safe_im, safe_re), at_zero)


def amplitude_phase(x: jax.Array):
  """Amplitude and phase of `rfft2(x)` (both float32, shape (B, H, W//2+1, C))."""
  z = rfft2(x)
  return amplitude(z), phase(z)
