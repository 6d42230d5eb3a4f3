"""Fourier helpers shared by the frequency branch, the losses and D_fre.

All transforms run in float32 over the spatial axes (1, 2) of NHWC tensors,
with PyTorch's default normalisation (forward unscaled, inverse 1/(HW)).
`amplitude` and `phase` have finite gradients everywhere, including at an
exactly-zero spectrum bin (where |z| and angle(z) are not differentiable):
there both are 0, as `torch.abs` and `torch.angle` give, with a zero gradient.
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
