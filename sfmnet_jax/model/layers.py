"""Basic layers of the SFMNet release, in Flax linen, NHWC.

Parameter names mirror the PyTorch release so that checkpoints map by a
generic rule (see `sfmnet_jax.weights.release`): a child that PyTorch keeps in
an `nn.Sequential` at index N is named `layers_N` here (Flax's own convention
for list attributes), conv kernels are `kernel` in (kh, kw, in, out) layout.

Initialisers follow PyTorch's defaults (kaiming-uniform with a = sqrt(5),
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), so training
from scratch behaves like the release.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# U(-1/sqrt(fan_in), +1/sqrt(fan_in)): PyTorch's default for conv/linear weights.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(features: int, kernel_size: int, in_features: int, *, use_bias: bool = True,
         groups: int = 1, dtype: Dtype = jnp.float32, name: Optional[str] = None) -> nn.Conv:
  """PyTorch's `Conv2d(in, out, k, stride 1, padding k//2)` as an `nn.Conv` (kernel
  (k, k, in/groups, out)), with PyTorch's initialisers; `groups=in_features` is a
  depthwise conv."""
  p = kernel_size // 2
  fan_in = in_features // groups * kernel_size * kernel_size
  return nn.Conv(features, (kernel_size, kernel_size), padding=((p, p), (p, p)),
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype,
                 kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name=name)


def sequential(name: str, *layers) -> nn.Sequential:
  """An `nn.Sequential` whose module at position N is named `layers_N`.

  This is how the release's `nn.Sequential` children (`name.N`) appear in
  Flax. Modules are re-created unbound so that the Sequential, not the
  calling compact method, owns them.
  """
  return nn.Sequential(
      [l.clone(parent=None) if isinstance(l, nn.Module) else l for l in layers], name=name)


def nan_to_num(x: jax.Array, value: float = 1e-5) -> jax.Array:
  """The release's `torch.nan_to_num(x, nan=1e-5, posinf=1e-5, neginf=1e-5)`."""
  return jnp.where(jnp.isfinite(x), x, jnp.asarray(value, x.dtype))


def pixel_unshuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Space-to-depth with PyTorch's order: out channel c*r*r + i*r + j <- pixel (r*y+i, r*x+j) of c."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)  # b, h', w', c, i, j
  return x.reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Depth-to-space, the exact inverse of `pixel_unshuffle` (PyTorch's PixelShuffle)."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # b, h, i, w, j, c
  return x.reshape(b, h * r, w * r, c)


class PReLU(nn.Module):
  """`torch.nn.PReLU()`: one learnable slope shared by all channels (param `weight`, shape (1,))."""

  init_value: float = 0.25

  @nn.compact
  def __call__(self, x):
    slope = self.param("weight", nn.initializers.constant(self.init_value), (1,))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class Scale(nn.Module):
  """A learnable scalar (`re_scale.scale` in the release), init 1.0."""

  init_value: float = 1.0

  @nn.compact
  def __call__(self, x):
    s = self.param("scale", nn.initializers.constant(self.init_value), (1,))
    return x * s.astype(x.dtype)


class ConvAct(nn.Module):
  """Release `ConvAct`: conv k x k without bias (`layers`), then an optional activation (`act`)."""

  features: int
  kernel_size: int = 3
  act: Optional[str] = None  # None | 'relu' | 'prelu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(self.features, self.kernel_size, x.shape[-1], use_bias=False, dtype=self.dtype,
             name="layers")(x)
    if self.act == "relu":
      x = nn.relu(x)
    elif self.act == "prelu":
      x = PReLU(name="act")(x)
    elif self.act is not None:
      raise ValueError(f"unknown activation {self.act!r}")
    return x


class Down(nn.Module):
  """Release `Down`: ConvAct 3x3 -> PixelUnshuffle(2) -> ConvAct 1x1 (4C -> C). Halves H and W."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.features
    return sequential(
        "layers",
        ConvAct(c, 3, dtype=self.dtype),
        pixel_unshuffle,
        ConvAct(c, 1, dtype=self.dtype),
    )(x)


class Up(nn.Module):
  """Release `Up` (an nn.Sequential there): conv 1x1 C -> 4C with bias -> PixelShuffle(2) -> PReLU."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = conv(4 * self.features, 1, x.shape[-1], dtype=self.dtype, name="layers_0")(x)
    x = pixel_shuffle(x)
    return PReLU(name="layers_2")(x)
