"""What `sfmnet-infer` does with each input file, in one process or on Beam workers.

`RestoreJob(out_dir, load_generator, scale, ...)` holds the options (picklable:
`load_generator` is a function that returns the generator, called once per
process by `load()`). `job.run(paths)` restores files and returns one decision
per file:
  - an image of the model's LR size is an aligned LR face ("crop"): written as
    `<name>_sfmnet_x8.png` (128x128); crops are batched together, and a face's
    result does not depend on its batch-mates, so one crop at a time gives the
    same bytes;
  - a larger image is a photo: with `detect`, every face is found, aligned,
    restored and pasted back ("photo", or "no_face"), with its PNGs and JSON as
    `photo.py` describes; without, it is centre-cropped to the LR size ("crop");
  - a file that cannot be read is "unreadable", a photo over `max_pixels`
    "too_large", anything else that fails "error", with the message.
Each decision is written to `OUT/.infer_pending/<file>.json` once the file's
outputs are on disk (PNGs are written atomically), and `merge_log` gathers them
into `OUT/infer_log.json`: a rerun skips every file already decided, so a
killed run resumes where it stopped. Messages name files by their own path.
"""

import json
import logging
import os
from typing import Any, Callable, Dict, Iterable, List, NamedTuple

from sfmnet_jax.data import degradation, image_io
from sfmnet_jax.data.degradation import HR_SIZE
from sfmnet_jax.data.visualize import save_png
from sfmnet_jax.faces import alignment, photo

PENDING = ".infer_pending"
LOG = "infer_log.json"
FINAL = ("crop", "photo", "no_face", "unreadable", "too_large", "error")


class _Crop(NamedTuple):
  """An input that is already a face crop: restored as it is, at `scale`."""
  file_name: str
  name: str
  image: Any  # (s, s, 3) uint8, s the LR size of `scale`
  what: str  # how the input was read, for its decision
  scale: int


def write_photo(result: photo.PhotoResult, name: str, out_dir: str, freq: bool, bicubic: bool):
  s = result.scale
  save_png(result.restored, os.path.join(out_dir, f"{name}_restored_x{s}.png"))
  if bicubic:
    save_png(result.upscaled, os.path.join(out_dir, f"{name}_bicubic_x{s}.png"))
  save_png(photo.annotate(result.photo, result.faces), os.path.join(out_dir, f"{name}_faces.png"))
  for pf in result.faces:
    if pf.sr is None:
      continue
    stem = os.path.join(out_dir, f"{name}_face{pf.index:02d}")
    save_png(pf.lr, f"{stem}_lr.png")
    save_png(pf.sr, f"{stem}_sfmnet_x{s}.png")
    if freq:
      save_png(pf.fre, f"{stem}_sfmnet_x{s}_freq.png")
    if bicubic:
      save_png(pf.lr_up, f"{stem}_bicubic_x{s}.png")
  _write_json_atomic(os.path.join(out_dir, f"{name}_faces.json"), result.to_json())


def _write_json_atomic(path: str, value) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _pending_path(out_dir: str, file_name: str) -> str:
  return os.path.join(out_dir, PENDING, file_name + ".json")


def decided(out_dir: str) -> Dict[str, dict]:
  """Every decision made so far in `out_dir` (the log and pending files), by file name."""
  out = {}
  log = os.path.join(out_dir, LOG)
  if os.path.exists(log):
    with open(log) as f:
      out.update({d["file"]: d for d in json.load(f)["files"]})
  pending = os.path.join(out_dir, PENDING)
  if os.path.isdir(pending):
    for n in sorted(os.listdir(pending)):
      if n.endswith(".json"):
        with open(os.path.join(pending, n)) as f:
          d = json.load(f)
        out[d["file"]] = d
  return out


def merge_log(out_dir: str, extra: dict = None) -> Dict[str, dict]:
  """Writes `OUT/infer_log.json` (sorted by file) from the log and pending decisions, then
  removes the pending files. Returns the decisions."""
  everything = decided(out_dir)
  _write_json_atomic(os.path.join(out_dir, LOG),
                     {**(extra or {}), "files": [everything[k] for k in sorted(everything)]})
  pending = os.path.join(out_dir, PENDING)
  if os.path.isdir(pending):
    for n in os.listdir(pending):
      os.remove(os.path.join(pending, n))
    os.rmdir(pending)
  return everything


class RestoreJob:
  """Restores input files into `out_dir` (see the module docstring). `load_generator`
  returns one generator (of `scale`) or {scale: generator}: then each face goes to the
  scale that suits its size (`photo.choose_scale`) and an LR crop to the model of its size."""

  def __init__(self, out_dir: str, load_generator: Callable, scale: int, *, detect=True,
               detector="auto", upsample=2, min_score=None, convention="celeba",
               restore_large=False, freq=False, bicubic=False,
               max_pixels=photo.DEFAULT_MAX_PIXELS):
    self.out_dir, self.load_generator, self.scale = out_dir, load_generator, scale
    self.detect, self.detector, self.upsample = detect, detector, upsample
    self.min_score, self.convention, self.restore_large = min_score, convention, restore_large
    self.freq, self.bicubic, self.max_pixels = freq, bicubic, max_pixels
    self.generator = None

  def load(self) -> "RestoreJob":
    """Loads the generator (once per process) and returns the job."""
    if self.generator is None:
      self.generator = self.load_generator()
    if not isinstance(self.generator, dict):
      self.generator = {self.scale: self.generator}
    return self

  def run(self, paths: Iterable[str]) -> List[dict]:
    """Restores `paths` (their outputs written, their decisions kept as pending files)."""
    self.load()
    os.makedirs(os.path.join(self.out_dir, PENDING), exist_ok=True)
    lr_sizes = {degradation.lr_size(s): s for s in self.generator}
    crops, decisions = [], []
    for path in paths:
      file_name = os.path.basename(path)
      name = os.path.splitext(file_name)[0]
      try:
        image = image_io.read_rgb(path, max_pixels=self.max_pixels)
      except image_io.ImageTooLarge as e:
        decisions.append(self._keep({"file": file_name, "status": "too_large", "error": str(e)}))
        continue
      except (image_io.ImageReadError, OSError) as e:
        decisions.append(self._keep({"file": file_name, "status": "unreadable",
                                     "error": str(e)}))
        continue
      try:
        side = image.shape[0] if image.shape[0] == image.shape[1] else None
        if side in lr_sizes:
          crops.append(_Crop(file_name, name, image, "an LR face", lr_sizes[side]))
        elif not self.detect:
          crops.append(_Crop(file_name, name,
                             image_io.to_square_size(image, degradation.lr_size(self.scale)),
                             f"{image.shape[1]}x{image.shape[0]} photo, centre-cropped",
                             self.scale))
        else:
          decisions.append(self._keep(self._photo(file_name, name, image)))
      except Exception as e:  # pylint: disable=broad-except  (a decision, not a failed run)
        logging.exception("%s failed", path)
        decisions.append(self._keep({"file": file_name, "status": "error", "error": str(e)}))
    if crops:
      decisions += self._crops(crops)
    return decisions

  def _keep(self, decision: dict) -> dict:
    _write_json_atomic(_pending_path(self.out_dir, decision["file"]), decision)
    return decision

  def _photo(self, file_name, name, image) -> dict:
    conv = alignment.get_convention(self.convention)
    main = max(self.generator)
    result = photo.restore_photo(image, self.generator, convention=conv,
                                 detector=self.detector, upsample=self.upsample,
                                 min_score=self.min_score, restore_large=self.restore_large)
    if not result.faces:
      return {"file": file_name, "status": "no_face", "size": list(image.shape[1::-1])}
    write_photo(result, name, self.out_dir, self.freq, self.bicubic)
    large = sum(pf.status == "too_large" for pf in result.faces)
    return {"file": file_name, "status": "photo", "faces": len(result.faces),
            "restored": len(result.faces) - large, "too_large": large,
            "output": f"{name}_restored_x{main}.png",
            "decisions": [f"face {pf.index}: {pf.decision()}" for pf in result.faces]}

  def _crops(self, crops) -> List[dict]:
    import numpy as np  # pylint: disable=g-import-not-at-top
    decisions = []
    for s in sorted({c.scale for c in crops}):
      group = [c for c in crops if c.scale == s]
      lr_up, out, fre = photo.super_resolve(self.generator[s], None,
                                            np.stack([c.image for c in group]))
      for i, (file_name, name, _, what, _) in enumerate(group):
        save_png(out[i], os.path.join(self.out_dir, f"{name}_sfmnet_x{s}.png"))
        if self.freq:
          save_png(fre[i], os.path.join(self.out_dir, f"{name}_sfmnet_x{s}_freq.png"))
        if self.bicubic:
          save_png(lr_up[i], os.path.join(self.out_dir, f"{name}_bicubic_x{s}.png"))
        decisions.append(self._keep({"file": file_name, "status": "crop", "input": what,
                                     "output": f"{name}_sfmnet_x{s}.png", "scale": s,
                                     "size": [HR_SIZE, HR_SIZE]}))
    return decisions
