"""`sfmnet_demo_faces`: the built-in, download-free demo dataset (a TFDS builder).

Procedural faces from `demo_render.render_face` (no licence attached: they are
drawn by this code), 128x128 HR only; LR and LR-up are made in the input
pipeline exactly as the release made them (PIL bicubic). Train and test
splits use disjoint seeds. Also the public-domain astronaut portrait from
scikit-image (`astronaut_face`), a real face for sample images.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from sfmnet_jax.data import resize
from sfmnet_jax.data import demo_render

TEST_INDEX_OFFSET = 1_000_000  # test faces use indices disjoint from the train ones


@dataclasses.dataclass(eq=False)
class DemoFacesConfig(tfds.core.BuilderConfig):
  num_train: int = 512
  num_test: int = 32
  seed: int = 0


def demo_config(num_train: int, num_test: int, seed: int = 0) -> DemoFacesConfig:
  return DemoFacesConfig(name=f"train{num_train}_test{num_test}_seed{seed}",
                         num_train=num_train, num_test=num_test, seed=seed,
                         description="Procedural demo faces, 128x128.")


class SfmnetDemoFaces(tfds.core.GeneratorBasedBuilder):
  """Procedural 128x128 faces (deterministic by seed), train and test splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "hr": tfds.features.Image(shape=(128, 128, 3)),
            "file_name": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {
        "train": self._generate_examples(0, cfg.num_train),
        "test": self._generate_examples(TEST_INDEX_OFFSET, cfg.num_test),
    }

  def _generate_examples(self, offset, count):
    cfg = self.builder_config
    for i in range(count):
      index = offset + i
      name = f"demo_{cfg.seed}_{index:07d}.png"
      yield name, {"hr": demo_render.render_face(cfg.seed, index), "file_name": name}


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
