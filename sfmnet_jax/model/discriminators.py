"""The two LightCNN-9 style discriminators of SFMNet's GAN stage (NHWC).

Parameter names are the release's (`model/discriminator.py`: `features.N` and
`classifier.N` in `network_9layers` and `network_9layers_fft`) under the
generator's naming rule, and the flatten runs in PyTorch's (C, H, W) order, so
the release's discriminator state_dicts load by `release_weights`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sfmnet_jax.model import spectral
from sfmnet_jax.model.generator import init_variables
from sfmnet_jax.model.layers import sequential, torch_bias_init, torch_kernel_init

Dtype = Any
INPUT_SIZE = (128, 128)  # the flatten sizes (8*8*128, 5120) fix the input size


class MFM(nn.Module):
  """Max-feature-map: conv (or dense) to 2*out channels, then max of the two halves."""

  features: int
  kernel_size: int = 3
  padding: int = 1
  linear: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    if self.linear:
      layer = nn.Dense(2 * self.features, dtype=self.dtype, kernel_init=torch_kernel_init,
                       bias_init=torch_bias_init(cin), name="filter")
    else:
      k, p = self.kernel_size, self.padding
      layer = nn.Conv(2 * self.features, (k, k), padding=((p, p), (p, p)), dtype=self.dtype,
                      kernel_init=torch_kernel_init, bias_init=torch_bias_init(cin * k * k),
                      name="filter")
    a, b = jnp.split(layer(x), 2, axis=-1)
    return jnp.maximum(a, b)


class Group(nn.Module):
  """LightCNN `group`: MFM 1x1 (in -> in, `conv_a`) then MFM k x k (in -> out, `conv`)."""

  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = MFM(x.shape[-1], 1, 0, dtype=self.dtype, name="conv_a")(x)
    k = self.kernel_size
    return MFM(self.features, k, k // 2, dtype=self.dtype, name="conv")(x)


def max_pool_ceil(x):
  """2x2/2 max pooling with PyTorch's ceil_mode=True (a partial window at odd edges)."""
  h, w = x.shape[1:3]
  return nn.max_pool(x, (2, 2), (2, 2), padding=((0, h % 2), (0, w % 2)))


class LightCNN9(nn.Module):
  """LightCNN-9 trunk + MFM-linear(256) + leaky_relu(0.2) + dense(1): one logit per image.

  Subclasses say what the trunk sees (`prepare`).
  """

  dtype: Dtype = jnp.float32

  def prepare(self, images):
    return images

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"{type(self).__name__} takes (B, H, W, 3) images, "
                       f"got shape {tuple(images.shape)}")
    dt = self.dtype
    x = self.prepare(jnp.asarray(images, jnp.float32))
    x = sequential(
        "features",
        MFM(48, 5, 2, dtype=dt),
        max_pool_ceil,
        Group(96, dtype=dt),
        max_pool_ceil,
        Group(192, dtype=dt),
        max_pool_ceil,
        Group(128, dtype=dt),
        Group(128, dtype=dt),
        max_pool_ceil,
    )(x)
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's (C, H, W) flatten
    x = sequential(
        "classifier",
        MFM(256, linear=True, dtype=dt),
        lambda t: nn.leaky_relu(t, 0.2),
        nn.Dense(1, dtype=dt, kernel_init=torch_kernel_init, bias_init=torch_bias_init(256)),
    )(x)
    return x[:, 0].astype(jnp.float32)


class SpatialDiscriminator(LightCNN9):
  """D_spa: LightCNN-9 on the RGB image; (B, 128, 128, 3) -> (B,) logits."""


class FrequencyDiscriminator(LightCNN9):
  """D_fre: LightCNN-9 on [amplitude, phase] of rfft2(image) (6 channels, 128 x 65)."""

  def prepare(self, images):
    amp, pha = spectral.amplitude_phase(images)
    return jnp.concatenate([amp, pha], axis=-1)


def init_discriminator(model: nn.Module, seed: int = 0, image_size=INPUT_SIZE):
  """A discriminator's variables for images of `image_size` (the modules' initialisers)."""
  return init_variables(model, seed, image_size)
