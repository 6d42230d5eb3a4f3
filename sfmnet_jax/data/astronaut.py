"""scikit-image's public-domain astronaut portrait (Eileen Collins): the one real face photo
that installs, as a face crop and as synthetic group photos. numpy, PIL and scikit-image only
(no TensorFlow), so that `sfmnet-infer --model=... --demo` runs without it."""

import numpy as np

from sfmnet_jax.data import resize


def astronaut_face(size: int = 128) -> np.ndarray:
  """The face of scikit-image's public-domain astronaut portrait (Eileen Collins), size x size."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  crop = skimage.data.astronaut()[20:220, 126:326]
  return resize.resize_uint8(crop, (size, size))


# The astronaut's face box (dlib HOG, full 512x512 image) and a head-and-shoulders crop.
ASTRONAUT_FACE_BOX = (179, 83, 266, 170)
ASTRONAUT_PORTRAIT = (0, 320, 80, 400)  # top, bottom, left, right


def astronaut_group_photo(num_faces: int = 5, size=(1000, 1000), face_width: float = 26.0,
                          max_rotation: float = 12.0, seed: int = 0):
  """A synthetic group photo: the public-domain astronaut, shrunk so that her face is about
  `face_width` px wide, rotated by up to `max_rotation` degrees, placed `num_faces` times on
  a smooth background of `size` = (height, width).

  Returns (uint8 image, [(x, y) of each face centre]).
  """
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  top, bottom, left, right = ASTRONAUT_PORTRAIT
  portrait = Image.fromarray(skimage.data.astronaut()[top:bottom, left:right])
  s = face_width / (ASTRONAUT_FACE_BOX[2] - ASTRONAUT_FACE_BOX[0])
  tile = portrait.resize((round(portrait.width * s), round(portrait.height * s)), Image.LANCZOS)
  face_x = ((ASTRONAUT_FACE_BOX[0] + ASTRONAUT_FACE_BOX[2]) / 2 - left) * s
  face_y = ((ASTRONAUT_FACE_BOX[1] + ASTRONAUT_FACE_BOX[3]) / 2 - top) * s
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w]
  background = np.stack([70 + 90 * yy / h, 110 + 60 * xx / w, 150 - 50 * yy / h], -1)
  canvas = Image.fromarray(background.astype(np.uint8))
  cols = min(num_faces, int(np.ceil(np.sqrt(num_faces * w / h))))
  rows = int(np.ceil(num_faces / cols))
  cell_w, cell_h = w // cols, h // rows
  if cell_w < tile.width or cell_h < tile.height:
    raise ValueError(f"{num_faces} faces of {face_width} px do not fit on {w}x{h}")
  centres = []
  for i in range(num_faces):
    r, c = divmod(i, cols)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    rotated = tile.rotate(angle, resample=Image.BICUBIC, center=(face_x, face_y))
    mask = Image.new("L", tile.size, 255).rotate(angle, resample=Image.BICUBIC,
                                                 center=(face_x, face_y))
    x0 = c * cell_w + int(rng.integers(0, cell_w - tile.width + 1))
    y0 = r * cell_h + int(rng.integers(0, cell_h - tile.height + 1))
    canvas.paste(rotated, (x0, y0), mask)
    centres.append((x0 + face_x, y0 + face_y))
  return np.asarray(canvas), centres
