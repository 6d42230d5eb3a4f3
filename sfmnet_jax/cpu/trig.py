"""Vectorisable atan2, sin and cos for the FreqBlocks on XLA:CPU.

XLA:CPU evaluates `atan2`, `sin` and `cos` by scalar libm calls, and SFMNet
takes the phase of every spectrum bin of every FreqBlock and its polar form
back. These are Cephes-style polynomials (float32 accuracy, a few 1e-7
absolute) that XLA fuses and vectorises. `polar` and `cartesian` replace
`FreqBlock.polar` / `FreqBlock.cartesian` through the interceptor
(`intercept.py`); they give the same values to float32 accuracy, the same
signed zeros as `torch.angle`, and a zero (not NaN) gradient at z == 0.
"""

import jax
import jax.numpy as jnp
import numpy as np

_PI = np.float32(np.pi)
_HALF_PI = np.float32(np.pi / 2)
_TAN_PI_8 = np.float32(0.41421356237309503)


def _atan_unit(a):
  """atan(a) for a in [0, 1] (Cephes atanf: reduction at tan(pi/8), degree-9 odd polynomial)."""
  big = a > _TAN_PI_8
  t = jnp.where(big, (a - 1.0) / (a + 1.0), a)
  z = t * t
  p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
       - 3.33329491539e-1) * z * t + t
  return jnp.where(big, np.float32(np.pi / 4) + p, p)


@jax.custom_jvp
def atan2(y, x):
  """`torch.atan2`: same values to float32 accuracy, same signed zeros (at x = y = 0:
  0, pi, -0 or -pi), derivative 0 there."""
  ax, ay = jnp.abs(x), jnp.abs(y)
  hi, lo = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
  r = _atan_unit(jnp.where(hi > 0, lo / jnp.where(hi > 0, hi, 1.0), 0.0))
  r = jnp.where(ay > ax, _HALF_PI - r, r)
  r = jnp.where(jnp.signbit(x), _PI - r, r)
  return jnp.where(jnp.signbit(y), -r, r)


@atan2.defjvp
def _atan2_jvp(primals, tangents):
  y, x = primals
  dy, dx = tangents
  r2 = x * x + y * y
  safe = jnp.where(r2 > 0, r2, 1.0)
  return atan2(y, x), jnp.where(r2 > 0, (x * dy - y * dx) / safe, 0.0)


def _reduce_quarter(x):
  """(r, k): x = r + k pi/2 with |r| <= pi/4 (Cody-Waite, three-part pi/2)."""
  k = jnp.round(x * np.float32(2 / np.pi))
  r = x - k * np.float32(1.5703125)
  r = r - k * np.float32(4.837512969970703125e-4)
  r = r - k * np.float32(7.54978995489188216e-8)
  return r, k.astype(jnp.int32) & 3


def _sin_cos_kernel(r):
  z = r * r
  s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
  c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z \
      - 0.5 * z + 1.0
  return s, c


@jax.custom_jvp
def sin_cos(x):
  """(sin x, cos x) to float32 accuracy for |x| up to ~1e4 (Cephes sinf/cosf)."""
  r, q = _reduce_quarter(x)
  s, c = _sin_cos_kernel(r)
  sin = jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))
  cos = jnp.where(q == 0, c, jnp.where(q == 1, -s, jnp.where(q == 2, -c, s)))
  return sin, cos


@sin_cos.defjvp
def _sin_cos_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  s, c = sin_cos(x)
  return (s, c), (c * dx, -s * dx)


def polar(spec):
  """(|z|, angle(z)) of a complex array, with zero gradients at z == 0."""
  re, im = jnp.real(spec), jnp.imag(spec)
  sq = re * re + im * im
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0), atan2(im, re)


def cartesian(amp, pha):
  """(amp cos pha, amp sin pha)."""
  s, c = sin_cos(pha)
  return amp * c, amp * s
