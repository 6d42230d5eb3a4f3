"""How the release makes a network input from a face: the one definition of LR and LR-up.

HR faces are HR_SIZE x HR_SIZE. LR is HR downscaled by the scale with PIL's
bicubic; the network's input LR-up is LR upscaled back to the HR size with
PIL's bicubic. `resize_fn` is `resize.resize_uint8` (numpy) or
`resize.tf_resize_uint8` (inside a tf.data graph): the same arithmetic.
"""

from sfmnet_jax.data import resize

HR_SIZE = 128
SCALES = (4, 8, 16)


def check_scale(scale) -> int:
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES} (the release's x4, x8, x16), got {scale!r}")
  return int(scale)


def lr_size(scale: int, hr_size: int = HR_SIZE) -> int:
  return hr_size // check_scale(scale)


def make_lr(hr, scale: int, resize_fn=resize.resize_uint8):
  """LR of a uint8 (H, W, 3) HR face: PIL bicubic down by `scale`."""
  h, w = int(hr.shape[0]), int(hr.shape[1])
  return resize_fn(hr, (h // scale, w // scale))


def upsample_lr(lr, size=(HR_SIZE, HR_SIZE), resize_fn=resize.resize_uint8):
  """LR-up, the network's input: PIL bicubic from LR back to the HR size."""
  return resize_fn(lr, tuple(size))


def degrade(hr, scale: int, resize_fn=resize.resize_uint8):
  """(LR, LR-up) of a uint8 HR face, as the release made them."""
  lr = make_lr(hr, scale, resize_fn)
  return lr, upsample_lr(lr, (int(hr.shape[0]), int(hr.shape[1])), resize_fn)
