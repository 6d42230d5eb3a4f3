"""`sfmnet-benchmark prepare`: photos per second of `sfmnet-datasets prepare`, one process
against an Apache Beam runner, on the same raw photos.

The photos are the public-domain astronaut, once each on a (height, width) background
with her face about `face_width` px wide (rotated up to 12 degrees, a new placement per
photo). Both runs write their own output folder; the benchmark checks that the two hold
the same PNG bytes and the same decisions, and estimates the time of CelebA's and Helen's
raw photos on N workers from the per-worker rate (photos of another size take another time).
"""

import json
import os
import tempfile
import time

from PIL import Image

from sfmnet_jax import runtime
from sfmnet_jax.data import astronaut
from sfmnet_jax.faces import prepare

DATASETS = {"CelebA": 202_599, "Helen": 2_330}  # raw photos
WORKERS = (1, 16, 64, 256)


def make_photos(folder, count, size=(400, 500), face_width=100.0):
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    path = os.path.join(folder, f"photo_{i:05d}.jpg")
    if not os.path.exists(path):
      image, _ = astronaut.astronaut_group_photo(1, size, face_width, seed=i)
      Image.fromarray(image).save(path, quality=95)


def _outputs(out_dir):
  files = {}
  for folder in ("HR", "LR_x4_bicubic", "LR_bicubic", "LR_x16_bicubic"):
    for name in os.listdir(os.path.join(out_dir, folder)):
      with open(os.path.join(out_dir, folder, name), "rb") as f:
        files[f"{folder}/{name}"] = f.read()
  with open(os.path.join(out_dir, prepare.LOG_FILE)) as f:
    decisions = sorted(json.load(f)["decisions"], key=lambda d: d["file"])
  return files, decisions


def run(photos: int, beam_pipeline_options: str, workers: int, detector="auto", upsample=1,
        work_dir=None, size=(400, 500), face_width=100.0):
  work_dir = work_dir or tempfile.mkdtemp(prefix="sfmnet_bench_prepare_")
  raw = os.path.join(work_dir, "raw")
  make_photos(raw, photos, size, face_width)
  prepare.PhotoJob(raw, work_dir, prepare.alignment.get_convention("celeba"), detector,
                   upsample).load_models()  # model loading is not timed (both pay it once)
  rows = {}
  for name, options in (("one_process", None), ("beam", beam_pipeline_options)):
    out = os.path.join(work_dir, name)
    t0 = time.perf_counter()
    counts = prepare.prepare(raw, out, detector=detector, upsample=upsample, progress=False,
                             beam_pipeline_options=options)
    elapsed = time.perf_counter() - t0
    rows[name] = {"seconds": elapsed, "photos_per_s": photos / elapsed, "counts": counts}
    print(f"  {name:<12} {photos} photos in {elapsed:7.1f} s: {photos / elapsed:6.2f} photos/s"
          f"  {counts}", flush=True)
  same = _outputs(os.path.join(work_dir, "one_process")) == _outputs(os.path.join(work_dir,
                                                                                  "beam"))
  per_worker = rows["beam"]["photos_per_s"] / workers
  estimates = {ds: {n: n_photos / (per_worker * n) / 3600 for n in WORKERS}
               for ds, n_photos in DATASETS.items()}
  result = {"benchmark": "prepare", "photos": photos, "photo_size": list(size),
            "face_width": face_width, "detector": detector, "upsample": upsample,
            "beam_pipeline_options": beam_pipeline_options, "beam_workers": workers,
            "rows": rows, "speed_up": rows["beam"]["photos_per_s"] /
            rows["one_process"]["photos_per_s"], "same_outputs": same,
            "estimated_hours": estimates, "machine": runtime.machine_info()}
  print(f"  Beam / one process: {result['speed_up']:.2f}x; same PNG bytes and decisions: "
        f"{same}")
  for ds, by_n in estimates.items():
    print(f"  estimate {ds} ({DATASETS[ds]} photos of this size): " + ", ".join(
        f"{n} worker(s) {h:.1f} h" for n, h in by_n.items()))
  return result
