r"""Face datasets from raw photos, in the published crop convention and the release's layout.

  sfmnet-datasets prepare RAW_DIR OUT_DIR --convention=celeba [--list=FILES.txt]

For every photo: detect faces (dlib), take the largest, align it into a 128x128
HR crop under the convention (`alignment.py`: celeba, helen, dic or a template
file) and write the release layout:
  OUT_DIR/HR/<name>.png, LR_x4_bicubic/, LR_bicubic/ (x8), LR_x16_bicubic/
(LR by PIL bicubic from HR, as the release made them), plus
OUT_DIR/prepare_log.json, a record of every decision (face found or not, how
many, which was taken, its box, score, landmarks and transform). Each decision
is kept as it is made (OUT_DIR/.prepare_pending/, merged into the log at the
end), so running the command again after an interruption skips every photo
already decided and writes nothing twice. A file that cannot be read is
counted as unreadable, any other failure on one photo as an error with its
message; neither stops the run.

`beam_pipeline_options` (`--beam_pipeline_options` of `sfmnet-datasets`)
runs the photos as an Apache Beam pipeline on any runner (`beam_prepare.py`),
with the same files and decisions. The folder feeds `train.py` (--config.data.train_dir=OUT_DIR) and
`evaluate.py --data_dir=OUT_DIR` unchanged.

--list names the photos to take, one path (relative to RAW_DIR) per line; a
second column (as in CelebA's list_eval_partition.txt) is matched against
--partition. Faces whose crop covers fewer than --min_crop_side photo pixels
are skipped (their HR would be an upscaled blur), and counted.
"""

import dataclasses
import glob
import hashlib
import json
import os
import shutil
from typing import Dict, List, Optional

import numpy as np

from sfmnet_jax.data import degradation, image_io
from sfmnet_jax.data.face_folder import LR_DIRS
from sfmnet_jax.data.visualize import save_png
from sfmnet_jax.faces import alignment
from sfmnet_jax.faces import detection as face_detection

LOG_FILE = "prepare_log.json"
PENDING_DIR = ".prepare_pending"  # decisions of a parallel run not yet merged into the log


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


def output_name(name: str) -> str:
  """The PNG name of a photo in every folder of the layout (`a/b.jpg` -> `a_b.png`)."""
  return os.path.splitext(name.replace(os.sep, "_").replace("/", "_"))[0] + ".png"


@dataclasses.dataclass(frozen=True)
class PhotoJob:
  """What `prepare` does to one photo; the same in one process and on Beam workers."""

  raw_dir: str
  out_dir: str
  convention: alignment.Convention
  detector: str = "auto"
  upsample: int = 1
  min_score: Optional[float] = None
  min_crop_side: float = 64.0

  def load_models(self):
    """Loads the detector and landmark models now (raises ModelFileMissing if absent)."""
    face_detection.load(self.detector, self.convention.landmark_points)

  def decide(self, name: str) -> dict:
    """Detects, aligns and writes one photo; returns its decision for the log. A file that
    cannot be read is "unreadable"; any other failure on the photo is "error" (logged with
    its message), so that no photo stops the run. A missing model file still raises."""
    decision = {"file": name}
    try:
      image = image_io.read_rgb(os.path.join(self.raw_dir, name))
    except (image_io.ImageReadError, OSError) as e:
      return dict(decision, status="unreadable", error=str(e))
    try:
      return self._decide_image(decision, image)
    except face_detection.ModelFileMissing:
      raise
    except Exception as e:  # pylint: disable=broad-except
      return dict(decision, status="error", error=f"{type(e).__name__}: {e}")

  def _decide_image(self, decision, image) -> dict:
    conv = self.convention
    faces = face_detection.detect(image, self.detector, self.upsample, self.min_score,
                                  landmarks=conv.landmark_points)
    decision["faces_found"] = len(faces)
    if not faces:
      return dict(decision, status="no_face")
    face = faces[0]  # the largest
    t = alignment.alignment_transform(face.landmarks5, face.landmarks68, conv, image.shape[:2])
    side = alignment.CROP_SIZE / alignment.scale_of(t)
    out_name = output_name(decision["file"])
    decision.update(taken=0, taken_rule="largest face", box=list(face.box),
                    score=round(face.score, 4), detector=face.detector,
                    landmarks=alignment.points_to_list(face.landmarks5
                                                        if face.landmarks5 is not None
                                                        else face.landmarks68),
                    crop_side_px=round(side, 2), transform=np.round(t, 6).tolist(),
                    output=out_name)
    if side < self.min_crop_side:
      return dict(decision, status="too_small")
    hr = crop_face(image, face, conv, t)
    for scale, lr_dir in LR_DIRS.items():
      save_png(degradation.make_lr(hr, scale), os.path.join(self.out_dir, lr_dir, out_name))
    save_png(hr, os.path.join(self.out_dir, "HR", out_name))  # last: marks it done
    return dict(decision, status="written")


def _load_log(out_dir: str) -> Dict[str, dict]:
  path = os.path.join(out_dir, LOG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {d["file"]: d for d in json.load(f)["decisions"]}


def _save_log(out_dir, decisions, settings):
  path = os.path.join(out_dir, LOG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"settings": settings, "decisions": [decisions[k] for k in sorted(decisions)]},
              f, indent=1)
  os.replace(path + ".tmp", path)


def write_pending(out_dir: str, decision: dict) -> None:
  """One decision of a parallel run, as its own file (merged into the log by the driver, on
  completion or by the next run after an interruption)."""
  key = hashlib.sha1(decision["file"].encode()).hexdigest()
  folder = os.path.join(out_dir, PENDING_DIR, key[:2])
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, key + ".json")
  with open(f"{path}.{os.getpid()}.tmp", "w") as f:
    json.dump(decision, f)
  os.replace(f"{path}.{os.getpid()}.tmp", path)


def _pending_files(out_dir):
  return sorted(glob.glob(os.path.join(out_dir, PENDING_DIR, "*", "*.json")))


def _merge_pending(out_dir, decisions, settings) -> int:
  """Moves the pending decisions into the log (log first, then the files: a crash between
  the two merges them again, to the same result). Returns how many there were."""
  files = _pending_files(out_dir)
  for path in files:
    with open(path) as f:
      d = json.load(f)
    decisions[d["file"]] = d
  if files:
    _save_log(out_dir, decisions, settings)
    shutil.rmtree(os.path.join(out_dir, PENDING_DIR))
  return len(files)


def _decided(decision, out_dir) -> bool:
  return bool(decision) and (decision["status"] != "written" or os.path.exists(
      os.path.join(out_dir, "HR", decision["output"])))


def _check_output_names(names):
  seen = {}
  for name in names:
    other = seen.setdefault(output_name(name), name)
    if other != name:
      raise ValueError(f"{other} and {name} would both be written as {output_name(name)}: "
                       "rename one, or list only one of them (--list)")


def prepare(raw_dir: str, out_dir: str, convention: str = "celeba", list_file=None,
            partition=None, detector: str = "auto", upsample: int = 1, min_score=None,
            min_crop_side: float = 64.0, progress: bool = True,
            beam_pipeline_options: Optional[str] = None) -> Dict[str, int]:
  """Writes the dataset (see the module docstring); returns the summary counts.

  `beam_pipeline_options` (e.g. "runner=DirectRunner,direct_num_workers=2") runs the
  undecided photos as an Apache Beam pipeline (`beam_prepare.py`) with the same result.
  """
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f"raw photo folder not found: {raw_dir}")
  conv = alignment.get_convention(convention)
  conv.warn_licence()
  names = read_list(raw_dir, list_file, partition)
  if not names:
    raise FileNotFoundError(f"no photos to prepare in {raw_dir}"
                            + (f" (list {list_file}, partition {partition})" if list_file else ""))
  _check_output_names(names)
  for d in ["HR", *LR_DIRS.values()]:
    os.makedirs(os.path.join(out_dir, d), exist_ok=True)
  settings = {"raw_dir": os.path.abspath(raw_dir), "convention": conv.name,
              "detector": detector, "upsample": upsample, "min_crop_side": min_crop_side}
  job = PhotoJob(os.path.abspath(raw_dir), os.path.abspath(out_dir), conv, detector, upsample,
                 min_score, min_crop_side)
  decisions = _load_log(out_dir)
  _merge_pending(out_dir, decisions, settings)  # an interrupted parallel run's
  todo = [name for name in names if not _decided(decisions.get(name), out_dir)]
  if todo:
    job.load_models()
  if beam_pipeline_options is not None and todo:
    from sfmnet_jax.faces import beam_prepare  # pylint: disable=g-import-not-at-top
    beam_prepare.run(job, todo, beam_pipeline_options)
  else:
    iterator = todo
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      iterator = tqdm.tqdm(todo, desc="prepare", unit="photo")
    for name in iterator:  # each decision is kept as it is made: a killed run resumes
      write_pending(out_dir, job.decide(name))
  if not _merge_pending(out_dir, decisions, settings):  # it saved the log if it merged any
    _save_log(out_dir, decisions, settings)
  counts = {k: 0 for k in ("written", "no_face", "too_small", "unreadable", "error",
                           "several_faces")}
  for name in names:
    d = decisions.get(name, {"status": "error"})  # a photo a runner lost: counted
    counts[d["status"]] = counts.get(d["status"], 0) + 1
    counts["several_faces"] += d.get("faces_found", 0) > 1
  return counts


def summary_line(counts, out_dir) -> str:
  return (f"{counts['written']} face(s) written to {out_dir}; {counts['no_face']} photo(s) "
          f"without a face; {counts['several_faces']} with several faces (the largest taken, "
          f"see {LOG_FILE}); {counts['too_small']} face(s) too small; {counts['unreadable']} "
          f"unreadable file(s); {counts['error']} photo(s) that failed (their error is in "
          f"{LOG_FILE})")
