"""The export's seam: SFMNet's FreqBlock transforms as real DFT matrix products.

ONNX has no 2-D real FFT and no complex tensors that runtimes agree on, so
`exportable(module)` returns the same module (same fields, parameters and
outputs) whose FreqBlocks compute, under `nn.intercept_methods`:
- `spectrum`: rfft2(y + 1e-8) as real and imaginary parts, each a product of
  the image with precomputed cosine and sine matrices, along W (the half
  spectrum) then along H;
- `polar`: amplitude sqrt(re^2 + im^2) and phase atan2(im, re) of those parts;
- `inverse_magnitude`: |irfft2|, the inverse products along H then W (the
  imaginary parts of the W transform's first and Nyquist bins are ignored, as
  every complex-to-real FFT does), with 1/(HW) folded into the matrices.
Everything else is the plain model. The matrices are the model's own
(`model.spectral.dft_matrices`, its "dft" transform), here in a channels-first
layout that ONNX runtimes take well; the products sum in float32 in another order than an FFT, so the two
differ by float32 rounding (a few 1e-7 of a spectrum's scale), and a bin that
lies that close to the negative real axis can take the other side of its 2 pi
phase jump, as in every other numerical mode (README "Numerics").
Nothing here is used for training: the products cost more FLOPs than an FFT.
"""

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sfmnet_jax.model.blocks import FreqBlock
from sfmnet_jax.model.spectral import dft_matrices


class RealSpectrum(NamedTuple):
  """A half spectrum as real and imaginary parts, each (B, C, H, W//2+1), float32."""

  re: jnp.ndarray
  im: jnp.ndarray


def rfft2(y) -> RealSpectrum:
  """rfft2 over H, W of an NHWC float32 tensor, as (B, C, H, W//2+1) real/imaginary parts."""
  m = dft_matrices(*y.shape[1:3])
  x = jnp.transpose(y.astype(jnp.float32), (0, 3, 1, 2))  # (B, C, H, W)
  a, b = x @ m["fw_cos"], x @ m["fw_sin"]  # along W: a + i b
  # along H: (cos - i sin)(a + i b) = (cos a + sin b) + i (cos b - sin a), with sin = -sin.
  re = m["fh_cos"] @ a - m["fh_sin"] @ b
  im = m["fh_cos"] @ b + m["fh_sin"] @ a
  return RealSpectrum(re, im)


def irfft2_magnitude(re, im, size):
  """|irfft2(re + i im, s=size)| of (B, C, H, W//2+1) parts, as NHWC float32."""
  m = dft_matrices(*size)
  # along H (inverse, complex): (cos + i sin)(re + i im)
  a = m["ih_cos"] @ re - m["ih_sin"] @ im
  b = m["ih_cos"] @ im + m["ih_sin"] @ re
  x = a @ m["iw_cos"] - b @ m["iw_sin"]  # along W, complex to real
  return jnp.abs(jnp.transpose(x, (0, 2, 3, 1)))


def _to_nchw(t):
  return jnp.transpose(t, (0, 3, 1, 2))


def _to_nhwc(t):
  return jnp.transpose(t, (0, 2, 3, 1))


@dataclasses.dataclass(frozen=True)
class SpectralInterceptor:
  """Computes FreqBlock's transforms by DFT matrix products (see the module docstring)."""

  def __call__(self, next_fun, args, kwargs, context):
    if not isinstance(context.module, FreqBlock):
      return next_fun(*args, **kwargs)
    name = context.method_name
    if name == "spectrum":
      (y,) = args
      return rfft2(y.astype(jnp.float32) + 1e-8)
    if name == "polar" and isinstance(args[0], RealSpectrum):
      re, im = args[0]
      return _to_nhwc(jnp.sqrt(re * re + im * im)), _to_nhwc(jnp.arctan2(im, re))
    if name == "inverse_magnitude":
      real, imag, size = args
      return irfft2_magnitude(_to_nchw(real) + 1e-8, _to_nchw(imag) + 1e-8, size)
    return next_fun(*args, **kwargs)


class Exportable:
  """Marks the classes `exportable` makes."""


@functools.lru_cache(maxsize=None)
def _exportable_class(cls):

  class ExportableModule(Exportable, cls):

    def __call__(self, *args, **kwargs):
      with nn.intercept_methods(SpectralInterceptor()):
        return super().__call__(*args, **kwargs)

  ExportableModule.__name__ = cls.__name__
  ExportableModule.__qualname__ = cls.__qualname__
  return ExportableModule


def exportable(module: nn.Module) -> nn.Module:
  """`module` (the plain generator, e.g. SFMNet) with its FreqBlocks' transforms as real DFT
  products; same fields and parameters."""
  if isinstance(module, Exportable):
    return module
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  return _exportable_class(type(module))(**fields)
