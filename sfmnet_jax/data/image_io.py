"""Reading face images from disk: any PIL-readable file to an (H, W, 3) uint8 array.

Grayscale, palette, CMYK, RGBA/LA (alpha dropped, as the release's
`Image.open(...).convert('RGB')` does) and 16-bit images (rescaled to 8 bits
with rounding) are converted; truncated, corrupt and non-image files raise an
`ImageReadError` naming the file.
"""

import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from sfmnet_jax.data import resize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
  """A file that cannot be read as an image (names the file)."""


def _to_uint8_rgb(im: Image.Image) -> np.ndarray:
  if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
    arr = np.asarray(im, dtype=np.float64)
    top = 65535.0 if arr.max(initial=0) <= 65535 else arr.max()
    arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)
  if im.mode == "F":
    arr = np.asarray(im, dtype=np.float64)
    scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
    arr = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.uint8)


class ImageTooLarge(ValueError):
  """A photo over the pixel limit (the message names the limit and how to raise it)."""


def read_rgb(path: str, max_pixels: int = None, exif: bool = True,
             name: Optional[str] = None) -> np.ndarray:
  """Reads an image file as (H, W, 3) uint8 RGB; raises ImageReadError naming the file.

  `exif` applies the EXIF orientation (a phone photo stored sideways comes out
  upright); `max_pixels` refuses larger images before decoding them. Errors name
  the file `name` when given (e.g. an upload's own name, where `path` is a
  server's scratch file), with every mention of `path` in the reason replaced by
  it; else `path`.
  """
  path = os.fspath(path)
  shown = name or path

  def clean(reason) -> str:
    return str(reason).replace(path, shown) if name else str(reason)

  try:
    with Image.open(path) as im:
      if max_pixels and im.width * im.height > max_pixels:
        raise ImageTooLarge(
            f"{shown}: {im.width}x{im.height} = {im.width * im.height / 1e6:.1f} megapixels, "
            f"over the limit of {max_pixels / 1e6:.1f} (raise it with --max_pixels, or "
            "downscale the photo)")
      im.load()
      if exif:
        im = ImageOps.exif_transpose(im)
      return _to_uint8_rgb(im)
  except ImageTooLarge:
    raise
  except FileNotFoundError:
    if name:
      raise FileNotFoundError(f"{shown}: file not found") from None
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    error = ImageReadError(f"{shown}: not a readable image ({clean(e)})")
    # With a display name, the cause (which names `path`) is not chained into tracebacks.
    raise error from (None if name else e)


def center_crop_square(image: np.ndarray) -> np.ndarray:
  """The largest centred square of an (H, W, C) image."""
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return image[top:top + side, left:left + side]


def to_square_size(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square and resizes to size x size with PIL's bicubic (antialiased)."""
  square = center_crop_square(image)
  if square.shape[0] == size:
    return square
  return resize.resize_uint8(square, (size, size))


def size_of(image: np.ndarray) -> Tuple[int, int]:
  return int(image.shape[0]), int(image.shape[1])


def list_image_files(directory: str):
  """Sorted regular, non-hidden files in `directory` (every one is a candidate image)."""
  names = sorted(n for n in os.listdir(directory)
                 if not n.startswith(".") and os.path.isfile(os.path.join(directory, n)))
  return names


def quantize(x) -> np.ndarray:
  """Float images in [0, 1] -> uint8 (round, clip); uint8 passes through."""
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x
  return np.round(np.clip(x.astype(np.float64) * 255.0, 0, 255)).astype(np.uint8)
