"""PIL's bicubic resize of uint8 images, reproduced exactly as two matrix products.

The release makes LR faces with `PIL.Image.resize(..., BICUBIC)` and upsamples
them back the same way. Pillow resamples 8-bit images separably (horizontal
pass, then vertical) with fixed-point coefficients (22 fractional bits),
rounding and clipping to uint8 after each pass. `bicubic_matrix` builds those
integer coefficients as a dense (out, in) matrix, so a resize is
`round(A_h @ round(img @ A_w^T))` with Pillow's rounding; computed in float64
every product and sum is an exact integer, so the result equals PIL's bit for
bit (tested against Pillow), in numpy or inside a tf.data graph.

Exactness holds for every resize this project makes: square to square (HR to
LR, LR to LR-up, crops to 128) and one-axis resizes. When both axes change
to a non-square shape, Pillow 13 may run the vertical pass first (its rule
is internal), and results can then differ from ours by a few levels.
"""

import functools
import math

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8 bits per channel
_ONE = float(1 << PRECISION_BITS)
_HALF = float(1 << (PRECISION_BITS - 1))


def _bicubic(x: float, a: float = -0.5) -> float:
  x = abs(x)
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  if x < 2.0:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Pillow's fixed-point bicubic coefficients for one axis, as an (out, in) float64 matrix.

  Entries are integers (scaled by 2**22); downscaling widens the kernel by the
  scale factor (antialiasing), as Pillow does.
  """
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  m = np.zeros((out_size, in_size), np.float64)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    weights = [_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
    total = sum(weights)
    for x, w in enumerate(weights):
      w = w / total if total != 0.0 else w
      m[xx, xmin + x] = math.trunc(w * _ONE + (0.5 if w >= 0 else -0.5))
  m.setflags(write=False)
  return m


def _round_clip(acc):
  """Pillow's `clip8((acc + 2**21) >> 22)`, for float64 accumulators holding integers."""
  return np.clip(np.floor((acc + _HALF) / _ONE), 0, 255)


def resize_uint8(image: np.ndarray, size) -> np.ndarray:
  """PIL-exact bicubic resize of an (H, W, C) uint8 image to `size` = (height, width)."""
  h, w = image.shape[:2]
  out_h, out_w = size
  x = image.astype(np.float64)
  if out_w != w:
    x = _round_clip(np.einsum("hwc,vw->hvc", x, bicubic_matrix(w, out_w)))
  if out_h != h:
    x = _round_clip(np.einsum("hwc,uh->uwc", x, bicubic_matrix(h, out_h)))
  return x.astype(np.uint8)


def tf_resize_uint8(image, size):
  """The same resize inside a TensorFlow graph: (H, W, C) uint8 tensor with static H, W."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  h, w = int(image.shape[0]), int(image.shape[1])
  out_h, out_w = size

  def round_clip(acc):
    return tf.clip_by_value(tf.floor((acc + _HALF) / _ONE), 0.0, 255.0)

  x = tf.cast(image, tf.float64)
  if out_w != w:
    x = round_clip(tf.einsum("hwc,vw->hvc", x, tf.constant(bicubic_matrix(w, out_w))))
  if out_h != h:
    x = round_clip(tf.einsum("hwc,uh->uwc", x, tf.constant(bicubic_matrix(h, out_h))))
  return tf.cast(x, tf.uint8)
