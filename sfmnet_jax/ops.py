"""SFMNet's convolutions and products as differentiable ops, with hand-written gradients.

Each is a `jax.custom_vjp` whose forward and gradients call `cpu_kernels`
(the C++ kernels on CPUs in float32, XLA's ops elsewhere): bias addition,
3x3 and 1x1 convs (the 1x1 also with one kernel per image), the channel
attention's per-image q^T k (`gram`), and depthwise 3x3 convs. `layers`
builds the Flax modules on them.
"""

import functools

import jax
import jax.numpy as jnp

from sfmnet_jax import cpu_kernels


@jax.custom_vjp
def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
  """y + b (b broadcast over the last axis), whose bias gradient, the per-channel sum
  of the output gradient, is `cpu_kernels.channel_sum` (C++ on CPUs)."""
  return y + b


def _add_bias_fwd(y, b):
  return y + b, None


def _add_bias_bwd(_, g):
  return g, cpu_kernels.channel_sum(g)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jax.Array, k: jax.Array, algorithm: str = "direct") -> jax.Array:
  """3x3 convolution (NHWC, kernel (3, 3, in, out)), zero padding 1.

  On CPUs (float32) the forward (by `algorithm`, see `cpu_kernels.conv3x3`),
  the input gradient (the same conv of the output gradient with the flipped,
  transposed kernel, by Winograd wherever channel counts allow: its rounding
  reaches no forward value, so the phase cannot amplify it) and the kernel
  gradient are `cpu_kernels`' C++ kernels; elsewhere XLA's.
  """
  return cpu_kernels.conv3x3(x, k, algorithm)


def _conv3x3_fwd(x, k, algorithm):
  return cpu_kernels.conv3x3(x, k, algorithm), (x, k)


def _conv3x3_bwd(algorithm, residuals, g):
  del algorithm  # the forward's; gradients' rounding feeds no forward value
  x, k = residuals
  k_t = jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype)
  dx = cpu_kernels.conv3x3(g, k_t, "auto")  # Winograd wherever channel counts allow
  return dx.astype(x.dtype), cpu_kernels.conv3x3_kernel_grad(x, g).astype(k.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def conv1x1(x: jax.Array, k: jax.Array) -> jax.Array:
  """1x1 convolution, x (N, H, W, in) times k (in, out) over pixels; with k (N, in, out)
  each image has its own kernel (the channel attention's `attn v`).

  On CPUs (float32) the product, the input gradient (g k^T) and the kernel
  gradient (x^T g) are `cpu_kernels`' C++ GEMMs; elsewhere XLA's dots.
  """
  return cpu_kernels.conv1x1(x, k)


def _conv1x1_fwd(x, k):
  return cpu_kernels.conv1x1(x, k), (x, k)


def _conv1x1_bwd(residuals, g):
  x, k = residuals
  dx = cpu_kernels.conv1x1(g, jnp.swapaxes(k, -1, -2).astype(g.dtype))
  dk = cpu_kernels.conv1x1_kernel_grad(x, g, per_image=k.ndim == 3)
  return dx.astype(x.dtype), dk.astype(k.dtype)


conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


@jax.custom_vjp
def gram(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per image, x^T y summed over pixels: x (N, H, W, Cx), y (N, H, W, Cy) -> (N, Cx, Cy)
  (the channel attention's q k^T); the C++ GEMMs of `conv1x1` on CPUs (float32)."""
  return cpu_kernels.conv1x1_kernel_grad(x, y, per_image=True)


def _gram_fwd(x, y):
  return gram(x, y), (x, y)


def _gram_bwd(residuals, g):
  x, y = residuals
  g = g.astype(x.dtype)
  # d/dx sum g[c, d] x[p, c] y[p, d] = y g^T; d/dy = x g.
  return (cpu_kernels.conv1x1(y, jnp.swapaxes(g, -1, -2)).astype(x.dtype),
          cpu_kernels.conv1x1(x, g).astype(y.dtype))


gram.defvjp(_gram_fwd, _gram_bwd)


def _shifted_sum(x, k):
  """sum_ij pad(x)[:, i:i+H, j:j+W, :] * k[i, j]: a depthwise 3x3 correlation, padding 1."""
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = None
  for i in range(3):
    for j in range(3):
      term = xp[:, i:i + h, j:j + w, :] * k[i, j]
      out = term if out is None else out + term
  return out


@jax.custom_vjp
def depthwise3x3(x: jax.Array, k: jax.Array) -> jax.Array:
  """Depthwise 3x3 convolution (NHWC), zero padding 1, kernel k of shape (3, 3, C).

  On CPUs (float32) a C++ kernel (`cpu_kernels.depthwise3x3`); elsewhere nine
  shifted multiply-adds, the same numbers as a grouped convolution but 10-20x
  faster than XLA:CPU's `feature_group_count` path. The hand-written gradient
  keeps only x as a residual: autodiff would store the nine shifted copies of
  x and spend most of a training step writing them.
  """
  return cpu_kernels.depthwise3x3(x, k, _shifted_sum)


def _depthwise3x3_fwd(x, k):
  return cpu_kernels.depthwise3x3(x, k, _shifted_sum), (x, k)


DK_CHUNK = 32


def _kernel_grad_chunk(x, g):
  """The depthwise kernel gradient of a few channels, as a dense conv's kernel gradient.

  A dense 3x3 conv with kernel K[i, j, c, d] = k[i, j, c] * (c == d) computes
  the depthwise conv; its kernel gradient dK (one conv-backward op, which
  XLA:CPU lowers to a fast GEMM-like kernel) holds dk on its diagonal. For
  up to 32 channels this costs less than the nine strided reductions that
  compute dk directly (at 8x128x128 on a 2-core AVX2 CPU: 31 vs 96 ms for 16
  channels, 70 vs 192 ms for 32).
  """
  return jnp.diagonal(cpu_kernels.xla_conv3x3_kernel_grad(x, g), axis1=2, axis2=3)


def _depthwise3x3_bwd(residuals, g):
  x, k = residuals
  # The adjoint of a correlation: the correlation with the flipped kernel.
  dx = cpu_kernels.depthwise3x3(g, k[::-1, ::-1].astype(g.dtype), _shifted_sum)
  return dx, cpu_kernels.depthwise3x3_kernel_grad(x, g, _depthwise_kernel_grad).astype(k.dtype)


def _depthwise_kernel_grad(x, g):
  """The depthwise kernel gradient through XLA (where `cpu_kernels` is not used)."""
  c = x.shape[-1]
  # Channels in blocks: a dense kernel gradient per block (cost grows with the block's
  # channels squared), so that wide layers do not pay C^2.
  chunk = max(d for d in range(1, min(c, DK_CHUNK) + 1) if c % d == 0)
  return jnp.concatenate([_kernel_grad_chunk(x[..., s:s + chunk], g[..., s:s + chunk])
                          for s in range(0, c, chunk)], axis=-1)


depthwise3x3.defvjp(_depthwise3x3_fwd, _depthwise3x3_bwd)
