"""`sfmnet-benchmark faces`: composed photos whose faces are where the ground truth says,
its scoring, the default detector's recall on small real faces, and the size policy."""

import numpy as np
import pytest
from PIL import Image

from sfmnet_jax.evaluation import faces
from sfmnet_jax.data import astronaut, demo_render
from sfmnet_jax.faces import alignment, photo
from sfmnet_jax.faces import detection as face_detection


def test_composed_faces_are_where_the_truth_says():
  crops = [demo_render.render_face(3, i) for i in range(3)]
  for size in (16, 48):
    image, truths = faces.compose(crops, size, 5, seed=1)
    assert image.shape[0] >= 384 and image.shape[1] >= 512 and len(truths) == 5
    for t in truths:
      assert abs(t.angle) <= faces.MAX_ROTATION and t.size == size
      if t.blur:
        continue
      back = alignment.warp(image, t.photo_to_crop(1, size), size)  # the crop, cut out again
      want = np.asarray(Image.fromarray(crops[t.crop]).resize((size, size), Image.LANCZOS))
      inner = slice(size // 4, 3 * size // 4)  # away from the rotated square's edges
      assert np.abs(back[inner, inner].astype(float) - want[inner, inner]).mean() < 6, size
  # The same at an output scale: the truth's transform to a 4x larger crop.
  image, truths = faces.compose(crops, 32, 2, seed=2)
  t = next(t for t in truths if not t.blur)
  up = np.asarray(Image.fromarray(image).resize((image.shape[1] * 4, image.shape[0] * 4),
                                                Image.BICUBIC))
  back = alignment.warp(up, t.photo_to_crop(4, 128), 128)
  assert np.abs(back[32:96, 32:96].astype(float) - crops[t.crop][32:96, 32:96]).mean() < 12


def test_matching_counts_found_faces_and_false_positives():
  image, truths = faces.compose([demo_render.render_face(3, 0)], 32, 3, seed=0)
  boxes = [t.region() for t in truths[:2]]
  found, false_positives = faces.match(truths, boxes + [(0, 0, 10, 10)])
  assert found == [True, True, False] and false_positives == 1
  x0, y0, x1, y1 = truths[0].region()
  huge = (x0 - 100, y0 - 100, x1 + 100, y1 + 100)  # the right place, the wrong size
  assert faces.match(truths, [huge]) == ([False] * 3, 1)
  assert faces.match(truths, boxes[:1] * 2) == ([True, False, False], 1)  # one face, once


@pytest.mark.parametrize("size, floor", [(16, 0.75), (24, 0.9)])
def test_default_detector_finds_small_real_faces(size, floor):
  """MTCNN on composed photos of the astronaut (a real face) at x8's input size and above."""
  face = astronaut.astronaut_face(128)
  rows = faces.detection_rows([face, face[:, ::-1].copy()], faces.candidates(["auto"]),
                              [size], photos_per_size=2, faces_per_photo=8, log=lambda *a: None)
  assert rows[0]["recall"] >= floor, rows
  assert rows[0]["false_positives_per_photo"] <= 0.5


def test_size_policy_decisions():
  for scale in (4, 8, 16):
    side = photo.max_crop_side(scale)
    assert side == photo.LARGE_FACE_RATIO * 128 / scale
    assert not photo.too_large(side, scale) and photo.too_large(side + 1, scale)
  box = face_detection.Face((0, 0, 10, 10), 0.99, "mtcnn")
  pf = photo.PhotoFace(1, box, np.diag([4.0, 4.0, 1.0]), status="too_large", scale=8)
  assert pf.crop_side == pytest.approx(32.0)
  assert pf.decision(8) == (f"left as it is: too large for x8 (32 px crop; restored up to "
                            f"{photo.max_crop_side(8):.0f} px)")
  assert photo.PhotoFace(2, box, np.diag([8.0, 8.0, 1.0])).decision(8) == \
      "restored at x8 (16 px crop)"
  assert "finds faces from ~16 px crops; x8 restores crops up to" in photo.size_range("mtcnn", 8)
