r"""Face datasets from raw photos, in the published crop convention and the release's layout.

  sfmnet-datasets prepare RAW_DIR OUT_DIR --convention=celeba [--list=FILES.txt]

For every photo: detect faces (dlib), take the largest, align it into a 128x128
HR crop under the convention (`alignment.py`: celeba, helen, dic or a template
file) and write the release layout:
  OUT_DIR/HR/<name>.png, LR_x4_bicubic/, LR_bicubic/ (x8), LR_x16_bicubic/
(LR by PIL bicubic from HR, as the release made them), plus
OUT_DIR/prepare_log.json, a record of every decision (face found or not, how
many, which was taken, its box, score, landmarks and transform). Running the
command again skips the photos already decided, so an interrupted run
resumes. The folder feeds `train.py` (--config.data.train_dir=OUT_DIR) and
`evaluate.py --data_dir=OUT_DIR` unchanged.

--list names the photos to take, one path (relative to RAW_DIR) per line; a
second column (as in CelebA's list_eval_partition.txt) is matched against
--partition. Faces whose crop covers fewer than --min_crop_side photo pixels
are skipped (their HR would be an upscaled blur), and counted.
"""

import json
import os
from typing import Dict, List, Optional

import numpy as np

from sfmnet_jax.faces import alignment
from sfmnet_jax.data import degradation
from sfmnet_jax.faces import detection as face_detection
from sfmnet_jax.data import image_io
from sfmnet_jax.data.face_folder import LR_DIRS
from sfmnet_jax.data.visualize import save_png

LOG_FILE = "prepare_log.json"


def read_list(raw_dir: str, list_file: Optional[str], partition: Optional[str]) -> List[str]:
  """Relative paths of the photos to prepare (every image file of RAW_DIR without a list)."""
  if not list_file:
    return image_io.list_image_files(raw_dir)
  names = []
  with open(list_file) as f:
    for line in f:
      parts = line.split()
      if not parts or parts[0].startswith("#"):
        continue
      if partition is not None and (len(parts) < 2 or parts[1] != partition):
        continue
      names.append(parts[0])
  return names


def crop_face(image, face, convention: alignment.Convention, transform) -> np.ndarray:
  """The HR crop of one detected face under `convention` (uint8, 128x128); `transform` is
  its `alignment.alignment_transform`."""
  if convention.name == "dic":
    return alignment.dic_crop(image, face.landmarks68)
  return alignment.warp(image, transform, alignment.CROP_SIZE)


def _load_log(out_dir: str) -> Dict[str, dict]:
  path = os.path.join(out_dir, LOG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {d["file"]: d for d in json.load(f)["decisions"]}


def _save_log(out_dir, decisions, settings):
  path = os.path.join(out_dir, LOG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"settings": settings, "decisions": list(decisions.values())}, f, indent=1)
  os.replace(path + ".tmp", path)


def prepare(raw_dir: str, out_dir: str, convention: str = "celeba", list_file=None,
            partition=None, detector: str = "auto", upsample: int = 1, min_score=None,
            min_crop_side: float = 64.0, progress: bool = True) -> Dict[str, int]:
  """Writes the dataset (see the module docstring); returns the summary counts."""
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f"raw photo folder not found: {raw_dir}")
  conv = alignment.get_convention(convention)
  conv.warn_licence()
  names = read_list(raw_dir, list_file, partition)
  if not names:
    raise FileNotFoundError(f"no photos to prepare in {raw_dir}"
                            + (f" (list {list_file}, partition {partition})" if list_file else ""))
  for d in ["HR", *LR_DIRS.values()]:
    os.makedirs(os.path.join(out_dir, d), exist_ok=True)
  settings = {"raw_dir": os.path.abspath(raw_dir), "convention": conv.name,
              "detector": detector, "upsample": upsample, "min_crop_side": min_crop_side}
  decisions = _load_log(out_dir)
  iterator = names
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    iterator = tqdm.tqdm(names, desc="prepare", unit="photo")
  for n, name in enumerate(iterator):
    out_name = os.path.splitext(name.replace(os.sep, "_"))[0] + ".png"
    done = decisions.get(name)
    if done and (done["status"] != "written" or
                 os.path.exists(os.path.join(out_dir, "HR", out_name))):
      continue
    decision = {"file": name}
    try:
      image = image_io.read_rgb(os.path.join(raw_dir, name))
    except (image_io.ImageReadError, FileNotFoundError) as e:
      decisions[name] = dict(decision, status="unreadable", error=str(e))
      continue
    faces = face_detection.detect(image, detector, upsample, min_score, landmarks=conv.landmark_points)
    decision["faces_found"] = len(faces)
    if not faces:
      decisions[name] = dict(decision, status="no_face")
      continue
    face = faces[0]  # the largest
    t = alignment.alignment_transform(face.landmarks5, face.landmarks68, conv, image.shape[:2])
    side = alignment.CROP_SIZE / alignment.scale_of(t)
    decision.update(taken=0, taken_rule="largest face", box=list(face.box),
                    score=round(face.score, 4), detector=face.detector,
                    landmarks=alignment.points_to_list(face.landmarks5
                                                        if face.landmarks5 is not None
                                                        else face.landmarks68),
                    crop_side_px=round(side, 2), transform=np.round(t, 6).tolist(),
                    output=out_name)
    if side < min_crop_side:
      decisions[name] = dict(decision, status="too_small")
      continue
    hr = crop_face(image, face, conv, t)
    save_png(hr, os.path.join(out_dir, "HR", out_name))
    for scale, lr_dir in LR_DIRS.items():
      save_png(degradation.make_lr(hr, scale), os.path.join(out_dir, lr_dir, out_name))
    decisions[name] = dict(decision, status="written")
    if n % 50 == 0:
      _save_log(out_dir, decisions, settings)
  _save_log(out_dir, decisions, settings)
  counts = {k: 0 for k in ("written", "no_face", "too_small", "unreadable", "several_faces")}
  for name in names:
    d = decisions.get(name, {})
    counts[d.get("status", "unreadable")] = counts.get(d.get("status", "unreadable"), 0) + 1
    counts["several_faces"] += d.get("faces_found", 0) > 1
  return counts


def summary_line(counts, out_dir) -> str:
  return (f"{counts['written']} face(s) written to {out_dir}; {counts['no_face']} photo(s) "
          f"without a face; {counts['several_faces']} with several faces (the largest taken, "
          f"see {LOG_FILE}); {counts['too_small']} face(s) too small; {counts['unreadable']} "
          "unreadable file(s)")
