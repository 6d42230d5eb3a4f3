"""Image grids for TensorBoard and the workdir: rows of LR-up | SR | frequency branch | HR."""

import os
from typing import Sequence

import numpy as np
from PIL import Image

from sfmnet_jax.data.image_io import quantize

GAP = 2


def grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
  """Tiles rows of equally sized (H, W, 3) images (float in [0, 1] or uint8) into one uint8 image."""
  tiles = [[quantize(t) for t in row] for row in rows]
  h = max(t.shape[0] for row in tiles for t in row)
  w = max(t.shape[1] for row in tiles for t in row)
  n_cols = max(len(r) for r in tiles)
  out = np.full((len(tiles) * (h + GAP) - GAP, n_cols * (w + GAP) - GAP, 3), 255, np.uint8)
  for i, row in enumerate(tiles):
    for j, tile in enumerate(row):
      if tile.shape[:2] != (h, w):  # an LR image: nearest-neighbour up to the largest tile
        tile = np.asarray(Image.fromarray(tile).resize((w, h), Image.NEAREST))
      out[i * (h + GAP):i * (h + GAP) + h, j * (w + GAP):j * (w + GAP) + w] = tile
  return out


def save_png(image: np.ndarray, path: str) -> None:
  """Writes `image` (float in [0, 1] or uint8) as a PNG that appears whole or not at all:
  written beside `path` and renamed, so a process killed mid-write leaves only a .tmp."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    Image.fromarray(quantize(image)).save(f, format="PNG")
  os.replace(tmp, path)
