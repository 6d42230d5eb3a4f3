"""`sfmnet_face_folder`: a folder of face crops as a TFDS dataset (one config per folder and scale).

Layouts:
  - the release's: `DIR/HR/*.png` (128x128) with optional `DIR/LR_x4_bicubic/`,
    `DIR/LR_bicubic/` (x8) and `DIR/LR_x16_bicubic/` holding the same file
    names. An LR folder for the scale is used as is; without one, LR is made
    from HR exactly as the release made it (PIL bicubic).
  - a plain folder of HR faces (no `HR/` inside): 128x128, or of any size with
    `resize_to_square=True` (centre-crop to a square, PIL-bicubic to 128).

Every problem names the file: unreadable images (or, with
`skip_unreadable=True`, a skip that is counted and written to `skipped.json`
beside the prepared data), HR of the wrong size, LR missing or of the wrong
size for its HR. Grayscale, RGBA and 16-bit images are converted.
The config name carries a fingerprint of the folder's listing (names, sizes,
modification times), so a changed folder is prepared again.
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import List, Optional

import numpy as np
import tensorflow_datasets as tfds

from sfmnet_jax.data import degradation
from sfmnet_jax.data import image_io
from sfmnet_jax.data.degradation import HR_SIZE, check_scale

LR_DIRS = {4: "LR_x4_bicubic", 8: "LR_bicubic", 16: "LR_x16_bicubic"}
SKIPPED_FILE = "skipped.json"


@dataclasses.dataclass(eq=False)
class FaceFolderConfig(tfds.core.BuilderConfig):
  folder: str = ""
  scale: int = 8
  resize_to_square: bool = False
  skip_unreadable: bool = False


def layout(folder: str):
  """(hr_dir, lr_dir or None) of a face folder for each scale: {scale: lr_dir}."""
  hr_dir = os.path.join(folder, "HR")
  if not os.path.isdir(hr_dir):
    return folder, {}
  lr = {s: os.path.join(folder, d) for s, d in LR_DIRS.items()
        if os.path.isdir(os.path.join(folder, d))}
  return hr_dir, lr


def _fingerprint(*dirs) -> str:
  h = hashlib.sha1()
  for d in dirs:
    if d is None:
      continue
    h.update(os.path.abspath(d).encode())
    for name in image_io.list_image_files(d):
      st = os.stat(os.path.join(d, name))
      h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:10]


def folder_config(folder: str, scale: int, *, resize_to_square: bool = False,
                  skip_unreadable: bool = False) -> FaceFolderConfig:
  """Validates a face folder and returns its TFDS config (raises naming what is wrong)."""
  scale = check_scale(scale)
  folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"face folder not found: {folder}")
  hr_dir, lr_dirs = layout(folder)
  if not image_io.list_image_files(hr_dir):
    raise FileNotFoundError(f"no image files in {hr_dir}")
  lr_dir = lr_dirs.get(scale)
  base = re.sub(r"[^a-z0-9]+", "_", os.path.basename(folder).lower()).strip("_") or "faces"
  options = f"{int(resize_to_square)}{int(skip_unreadable)}"
  name = f"{base}_x{scale}_{_fingerprint(hr_dir, lr_dir)}_{options}"
  return FaceFolderConfig(name=name, folder=folder, scale=scale,
                          resize_to_square=resize_to_square, skip_unreadable=skip_unreadable,
                          description=f"Faces from {folder}, x{scale}.")


class SfmnetFaceFolder(tfds.core.GeneratorBasedBuilder):
  """HR/LR face pairs from a folder (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.skipped: List[dict] = []

  def _info(self):
    lr = HR_SIZE // self.builder_config.scale
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "hr": tfds.features.Image(shape=(HR_SIZE, HR_SIZE, 3)),
            "lr": tfds.features.Image(shape=(lr, lr, 3)),
            "file_name": tfds.features.Text(),
            "lr_from_file": tfds.features.Scalar(dtype=np.bool_),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"images": self._generate_examples()}

  def _read(self, path: str):
    """The image at `path`, or None when it is unreadable and skipping is on."""
    try:
      return image_io.read_rgb(path)
    except image_io.ImageReadError as e:
      if not self.builder_config.skip_unreadable:
        raise image_io.ImageReadError(
            f"{e} (set data.skip_unreadable=True to skip such files, counted)") from None
      self.skipped.append({"path": path, "error": str(e)})
      return None

  def _generate_examples(self):
    cfg = self.builder_config
    hr_dir, lr_dirs = layout(cfg.folder)
    lr_dir: Optional[str] = lr_dirs.get(cfg.scale)
    lr_size = HR_SIZE // cfg.scale
    count = 0
    for name in image_io.list_image_files(hr_dir):
      hr_path = os.path.join(hr_dir, name)
      hr = self._read(hr_path)
      if hr is None:
        continue
      resized = False
      if image_io.size_of(hr) != (HR_SIZE, HR_SIZE):
        if not cfg.resize_to_square:
          raise ValueError(
              f"{hr_path}: HR is {hr.shape[1]}x{hr.shape[0]}, expected {HR_SIZE}x{HR_SIZE} "
              "(set data.resize_to_square=True to centre-crop and resize)")
        hr, resized = image_io.to_square_size(hr, HR_SIZE), True
      if lr_dir is not None:
        lr_path = os.path.join(lr_dir, name)
        if resized:
          raise ValueError(f"{hr_path}: HR needed resizing, so the LR file {lr_path} "
                           "cannot belong to it; remove the LR folder or the resize option")
        if not os.path.isfile(lr_path):
          raise FileNotFoundError(f"{lr_path}: LR file missing for {hr_path}")
        lr = self._read(lr_path)
        if lr is None:
          continue
        if image_io.size_of(lr) != (lr_size, lr_size):
          raise ValueError(f"{lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}, expected "
                           f"{lr_size}x{lr_size} for x{cfg.scale} of {HR_SIZE}x{HR_SIZE} HR")
      else:
        lr = degradation.make_lr(hr, cfg.scale)
      count += 1
      yield name, {"hr": hr, "lr": lr, "file_name": name, "lr_from_file": lr_dir is not None}
    if count == 0:
      raise ValueError(f"{hr_dir}: no readable images ({len(self.skipped)} skipped)")


def write_skipped(builder: SfmnetFaceFolder) -> None:
  with open(os.path.join(builder.data_dir, SKIPPED_FILE), "w") as f:
    json.dump(builder.skipped, f, indent=1)


def read_skipped(builder: SfmnetFaceFolder) -> List[dict]:
  path = os.path.join(builder.data_dir, SKIPPED_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)
