"""Whole-photo face restoration: find every face, super-resolve it, paste it back.

`restore_photo(image, {scale: generator})` (a generator per model scale, e.g.
`{8: as_generator(model, variables)}`):
  1. detects faces (`face_detection`: MTCNN or dlib, offline) with landmarks;
  2. aligns each into the model's training crop (`alignment`, a convention
     such as `celeba`) and samples the LR crop directly at the LR size
     (16x16 at x8), low-pass filtered where the face is larger than that;
  3. super-resolves all LR crops in batches (the same LR-up the release fed
     its network: PIL bicubic to 128);
  4. upscales the whole photo by the largest scale with PIL's bicubic and blends each
     128x128 result in through the inverse transform with a feathered mask.
     Pixels outside every mask are exactly the plainly upscaled photo.
A face whose crop covers more photo pixels than restoring beats the plain
upscale for (`max_crop_side`, measured per scale by `sfmnet-benchmark faces`,
docs/faces.md) is left as it is and reported, unless `restore_large`. Each face
says what was done and why (`PhotoFace.decision`).
"""

import dataclasses
import time
from typing import Callable, Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from sfmnet_jax.data import degradation, image_io
from sfmnet_jax.data.degradation import HR_SIZE
from sfmnet_jax.faces import alignment
from sfmnet_jax.faces import detection as face_detection

BATCH = 8
# The largest crop side (photo px) at which restoring a face (its crop sampled at the LR
# size, super-resolved, pasted back) beats the plain upscale on the benchmark
# (`sfmnet-benchmark faces`, docs/faces.md), as a multiple of the model's LR size. Measured
# at x4: restoring wins up to 1.0 (32 px crops) and loses from 1.5 (48 px): a face larger
# than the model's input is resampled down, super-resolved, and comes back blurrier than the
# photo's own pixels upscaled. x8 and x16 follow the same rule (no x8 model that beats
# bicubic was at hand to measure it).
LARGE_FACE_RATIO = 1.0
DEFAULT_MAX_PIXELS = 16_000_000


def as_generator(model, variables=None):
  """`generator(lr_up) -> (img_out, img_fre)`: a Flax generator applied with `variables`
  (JAX, imported only here), or, with `variables` None, `model` itself: a callable such as
  `sfmnet_jax.export.onnx_runtime.OnnxGenerator` (onnxruntime, no JAX)."""
  if variables is None:
    return model
  from sfmnet_jax.model.generator import jitted_apply  # pylint: disable=g-import-not-at-top
  apply = jitted_apply(model)
  return lambda lr_up: apply(variables, lr_up)


def super_resolve(model, variables, lrs: np.ndarray):
  """(N, s, s, 3) uint8 LR faces -> (lr_up, img_out, img_fre), float in [0, 1], 128x128.

  `model, variables` as `as_generator` takes them. Runs in batches of BATCH (or the
  generator's fixed `batch`), the last one padded, so one compiled shape serves all; a
  face's result does not depend on the other faces of its batch (tested bit for bit).
  """
  lr_up = np.stack([degradation.upsample_lr(lr) for lr in lrs]).astype(np.float32) / 255.0
  generator = as_generator(model, variables)
  batch = getattr(generator, "batch", None) or BATCH
  outs, freqs = [], []
  for i in range(0, len(lr_up), batch):
    chunk = lr_up[i:i + batch]
    padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                             np.float32)])
    out, fre = generator(padded)
    outs.append(np.asarray(out)[:len(chunk)])
    freqs.append(np.asarray(fre)[:len(chunk)])
  return lr_up, np.concatenate(outs), np.concatenate(freqs)


@dataclasses.dataclass
class PhotoFace:
  """One face of a photo and what was done with it."""

  index: int
  face: face_detection.Face
  transform: np.ndarray  # photo -> 128x128 crop
  status: str = "restored"  # "restored" | "too_large"
  scale: Optional[int] = None  # the scale it was restored (or left) at
  lr: Optional[np.ndarray] = None
  lr_up: Optional[np.ndarray] = None
  sr: Optional[np.ndarray] = None
  fre: Optional[np.ndarray] = None

  @property
  def crop_side(self) -> float:
    """Side of the face's crop in photo pixels."""
    return HR_SIZE / alignment.scale_of(self.transform)

  def decision(self, scale: Optional[int] = None) -> str:
    """What was done with the face, and why, in words (at the scale it went to)."""
    scale = self.scale or scale
    side = f"{self.crop_side:.0f} px crop"
    if self.status == "too_large":
      return (f"left as it is: too large for x{scale} ({side}; restored up to "
              f"{max_crop_side(scale):.0f} px)")
    return f"restored at x{scale} ({side})"

  def to_json(self):
    f = self.face
    return {"index": self.index, "box": list(f.box), "score": round(f.score, 4),
            "detector": f.detector, "landmarks5": alignment.points_to_list(f.landmarks5),
            "landmarks68": alignment.points_to_list(f.landmarks68),
            "crop_side_px": round(self.crop_side, 2),
            "transform": np.round(self.transform, 6).tolist(), "status": self.status,
            "decision": self.decision(self.scale) if self.scale else self.status}


@dataclasses.dataclass
class PhotoResult:
  photo: np.ndarray  # the input, uint8
  upscaled: np.ndarray  # the plain PIL-bicubic upscale
  restored: np.ndarray  # upscaled with the faces pasted in
  faces: List[PhotoFace]
  scale: int
  convention: str
  timings: dict

  def to_json(self):
    return {"size": [int(self.photo.shape[1]), int(self.photo.shape[0])], "scale": self.scale,
            "restored_size": [int(self.restored.shape[1]), int(self.restored.shape[0])],
            "convention": self.convention, "timings_s": self.timings,
            "faces": [f.to_json() for f in self.faces]}


def find_faces(image, convention: alignment.Convention, detector="auto", upsample=2,
               min_score=None):
  """Detected faces with their photo -> crop transforms."""
  faces = face_detection.detect(image, detector, upsample, min_score,
                                landmarks=convention.landmark_points)
  out = []
  for i, face in enumerate(faces):
    t = alignment.alignment_transform(face.landmarks5, face.landmarks68, convention,
                                      image.shape[:2])
    out.append(PhotoFace(i + 1, face, t))
  return out


def max_crop_side(scale: int) -> float:
  """The largest face crop (photo px) restored at `scale` (see the module docstring)."""
  return LARGE_FACE_RATIO * HR_SIZE / scale


def too_large(crop_side: float, scale: int) -> bool:
  """Whether a face whose crop covers `crop_side` photo pixels is left as it is at `scale`."""
  return crop_side > max_crop_side(scale)


def size_range(detector: str, scale) -> str:
  """The face sizes found and restored, in words (crop sides in photo pixels); `scale` is
  one scale or several (models of several scales)."""
  kind = face_detection.resolve(detector)
  smallest = face_detection.SMALLEST_CROP.get(kind)
  found = (f"{kind} finds faces from ~{smallest} px crops" if smallest else
           f"{kind} misses more than 10% of faces of crops up to 64 px (try --detector=mtcnn)")
  scales = sorted([scale] if isinstance(scale, int) else scale, reverse=True)
  restores = ", ".join(f"x{s} restores crops up to {max_crop_side(s):.0f} px" for s in scales)
  return f"{found}; {restores}"


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
  h, w = image.shape[:2]
  return np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.BICUBIC))


def choose_scale(crop_side: float, scales) -> Optional[int]:
  """The model scale a face of `crop_side` photo px goes to: the largest of `scales` that
  restores it (`max_crop_side`), or None when every one leaves it."""
  fitting = [s for s in scales if not too_large(crop_side, s)]
  return max(fitting) if fitting else None


def restore_photo(image: np.ndarray, generators: Dict[int, Callable], *, convention="celeba",
                  detector="auto", upsample=2, min_score=None, restore_large=False,
                  feather=0.12, faces: Optional[List[PhotoFace]] = None) -> PhotoResult:
  """Restores every face of `image` (uint8 RGB) with `generators` ({scale: generator}, each
  as `as_generator` returns it); see the module docstring. With several scales the photo is
  upscaled by the largest, and each face goes to the generator `choose_scale` picks for its
  size (its result pasted at the photo's scale).
  """
  if not generators:
    raise ValueError("restore_photo needs at least one generator ({scale: generator})")
  models = dict(generators)
  out_scale = max(models)
  conv = alignment.get_convention(convention) if isinstance(convention, str) else convention
  timings = {}
  t0 = time.perf_counter()
  if faces is None:
    faces = find_faces(image, conv, detector, upsample, min_score)
  timings["detect"] = time.perf_counter() - t0
  todo = {s: [] for s in models}
  for pf in faces:
    chosen = choose_scale(pf.crop_side, models)
    pf.scale = chosen or min(models)
    if chosen is None:
      if not restore_large:
        pf.status = "too_large"
        continue
      pf.scale = max(models)
    lr_size = degradation.lr_size(pf.scale)
    pf.lr = alignment.warp(image, alignment.with_output_size(pf.transform, lr_size), lr_size)
    todo[pf.scale].append(pf)
  t0 = time.perf_counter()
  for s, group in todo.items():
    if group:
      lr_up, out, fre = super_resolve(models[s], None, np.stack([pf.lr for pf in group]))
      for i, pf in enumerate(group):
        pf.lr_up, pf.sr, pf.fre = lr_up[i], out[i], fre[i]
  timings["super_resolve"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  upscaled = upscale(image, out_scale)
  restored = upscaled.copy()
  for pf in (pf for group in todo.values() for pf in group):
    alignment.paste(restored, image_io.quantize(pf.sr),
                    alignment.crop_to_canvas(pf.transform, out_scale), feather)
  timings["paste"] = time.perf_counter() - t0
  return PhotoResult(image, upscaled, restored, faces, out_scale, conv.name, timings)


def annotate(image: np.ndarray, faces: List[PhotoFace], min_side: int = 512) -> np.ndarray:
  """The photo (enlarged to at least `min_side`) with numbered boxes and landmarks."""
  h, w = image.shape[:2]
  k = max(1, int(np.ceil(min_side / max(h, w))))
  im = Image.fromarray(image).resize((w * k, h * k), Image.NEAREST)
  draw = ImageDraw.Draw(im)
  colours = {"restored": (40, 220, 60), "too_large": (240, 180, 0)}
  for pf in faces:
    colour = colours.get(pf.status, (220, 40, 40))
    box = [v * k for v in pf.face.box]
    draw.rectangle(box, outline=colour, width=max(1, k))
    draw.text((box[0] + 2, box[1] + 1), str(pf.index), fill=colour)
    for pts in (pf.face.landmarks5, pf.face.landmarks68):
      if pts is not None:
        for x, y in pts:
          cx, cy = (x + 0.5) * k, (y + 0.5) * k
          draw.ellipse([cx - k, cy - k, cx + k, cy + k], fill=(255, 60, 200))
  return np.asarray(im)
