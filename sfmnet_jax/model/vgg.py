"""VGG feature extractors for the perceptual loss (torchvision's `features` layout).

The paper's perceptual loss uses torchvision's VGG19 `features[0..34]` (up to
conv5_4, before its ReLU); VGG16's `features` up to conv5_3 can stand in.
Their weights come from files (`sfmnet_jax.weights.vgg`).
"""

from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512)
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torch_conv_indices(layers: Sequence[Any]) -> Tuple[int, ...]:
  """Indices of the convs in torchvision's `features` Sequential (conv, ReLU, ..., MaxPool)."""
  out, i = [], 0
  for v in layers:
    if v == "M":
      i += 1
    else:
      out.append(i)
      i += 2
  return tuple(out)


class VGGFeatures(nn.Module):
  """VGG `features` up to the last conv, before its ReLU. NHWC input in [0, 1]."""

  layers: Tuple[Any, ...] = VGG19_LAYERS
  imagenet_norm: bool = False  # the release feeds [0, 1] images unnormalised
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, self.dtype)
    if self.imagenet_norm:
      x = (x - jnp.asarray(IMAGENET_MEAN, self.dtype)) / jnp.asarray(IMAGENET_STD, self.dtype)
    names = iter(torch_conv_indices(self.layers))
    convs = [i for i, v in enumerate(self.layers) if v != "M"]
    for i, v in enumerate(self.layers):
      if v == "M":
        x = nn.max_pool(x, (2, 2), (2, 2))
        continue
      x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                  name=f"features_{next(names)}")(x)
      if i != convs[-1]:
        x = nn.relu(x)
    return x
