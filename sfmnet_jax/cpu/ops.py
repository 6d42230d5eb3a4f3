"""SFMNet's convolutions and products as differentiable ops, with hand-written gradients.

Each is a `jax.custom_vjp` whose forward and gradients call `kernels`
(the C++ kernels on CPUs in float32, XLA's ops elsewhere): bias addition,
3x3 and 1x1 convs (the 1x1 also with one kernel per image), the channel
attention's per-image q^T k (`gram`), and depthwise 3x3 convs.
`intercept.py` computes the model's layers with them.
"""

import functools

import jax
import jax.numpy as jnp

from sfmnet_jax.cpu import kernels


@jax.custom_vjp
def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
  """y + b (b broadcast over the last axis), whose bias gradient, the per-channel sum
  of the output gradient, is `kernels.channel_sum` (C++ on CPUs)."""
  return y + b


def _add_bias_fwd(y, b):
  return y + b, None


def _add_bias_bwd(_, g):
  return g, kernels.channel_sum(g)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, k: jax.Array, algorithm: str = "direct") -> jax.Array:
  """3x3 convolution (NHWC, kernel (3, 3, in, out)), zero padding 1.

  On CPUs (float32) the forward (by `algorithm`, see `kernels.conv3x3`),
  the input gradient (the same conv of the output gradient with the flipped,
  transposed kernel, by Winograd wherever channel counts allow: its rounding
  reaches no forward value, so the phase cannot amplify it) and the kernel
  gradient are `kernels`' C++ kernels; elsewhere XLA's.
  """
  return kernels.conv3x3(x, k, algorithm)


def _conv3x3_fwd(x, k, algorithm):
  return kernels.conv3x3(x, k, algorithm), (x, k)


def _conv3x3_bwd(algorithm, residuals, g):
  del algorithm  # the forward's; gradients' rounding feeds no forward value
  x, k = residuals
  k_t = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype)
  dx = kernels.conv3x3(g, k_t, "auto")  # Winograd wherever channel counts allow
  return dx.astype(x.dtype), kernels.conv3x3_kernel_grad(x, g).astype(k.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def conv1x1(x: jax.Array, k: jax.Array) -> jax.Array:
  """1x1 convolution, x (N, H, W, in) times k (in, out) over pixels; with k (N, in, out)
  each image has its own kernel (the channel attention's `attn v`).

  On CPUs (float32) the product, the input gradient (g k^T) and the kernel
  gradient (x^T g) are `kernels`' C++ GEMMs; elsewhere XLA's dots.
  """
  return kernels.conv1x1(x, k)


def _conv1x1_fwd(x, k):
  return kernels.conv1x1(x, k), (x, k)


def _conv1x1_bwd(residuals, g):
  x, k = residuals
  dx = kernels.conv1x1(g, jnp.swapaxes(k, -1, -2).astype(g.dtype))
  dk = kernels.conv1x1_kernel_grad(x, g, per_image=k.ndim == 3)
  return dx.astype(x.dtype), dk.astype(k.dtype)


conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


@jax.custom_vjp
def gram(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per image, x^T y summed over pixels: x (N, H, W, Cx), y (N, H, W, Cy) -> (N, Cx, Cy)
  (the channel attention's q k^T); the C++ GEMMs of `conv1x1` on CPUs (float32)."""
  return kernels.conv1x1_kernel_grad(x, y, per_image=True)


def _gram_fwd(x, y):
  return gram(x, y), (x, y)


def _gram_bwd(residuals, g):
  x, y = residuals
  g = g.astype(x.dtype)
  # d/dx sum g[c, d] x[p, c] y[p, d] = y g^T; d/dy = x g.
  return (kernels.conv1x1(y, jnp.swapaxes(g, -1, -2)).astype(x.dtype),
          kernels.conv1x1(x, g).astype(y.dtype))


gram.defvjp(_gram_fwd, _gram_bwd)


def _grouped_conv(x, k):
  """XLA's depthwise 3x3 correlation, padding 1 (a grouped conv; kernel (3, 3, C))."""
  return jax.lax.conv_general_dilated(x, k[:, :, None, :], (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=x.shape[-1])


def _grouped_conv_kernel_grad(x, g):
  """The depthwise kernel gradient through XLA (where the C++ kernel is not used)."""
  _, vjp = jax.vjp(lambda k: _grouped_conv(x, k), jnp.zeros((3, 3, x.shape[-1]), x.dtype))
  return vjp(g)[0]


@jax.custom_vjp
def depthwise3x3(x: jax.Array, k: jax.Array) -> jax.Array:
  """Depthwise 3x3 convolution (NHWC), zero padding 1, kernel k of shape (3, 3, C).

  On CPUs (float32) a C++ kernel (`kernels.depthwise3x3`), with C++ input and
  kernel gradients; elsewhere XLA's grouped conv.
  """
  return kernels.depthwise3x3(x, k, _grouped_conv)


def _depthwise3x3_fwd(x, k):
  return kernels.depthwise3x3(x, k, _grouped_conv), (x, k)


def _depthwise3x3_bwd(residuals, g):
  x, k = residuals
  # The adjoint of a correlation: the correlation with the flipped kernel.
  dx = kernels.depthwise3x3(g, k[::-1, ::-1].astype(g.dtype), _grouped_conv)
  return dx, kernels.depthwise3x3_kernel_grad(x, g, _grouped_conv_kernel_grad).astype(k.dtype)


depthwise3x3.defvjp(_depthwise3x3_fwd, _depthwise3x3_bwd)
