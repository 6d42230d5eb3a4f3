"""`prepare` on Apache Beam (DirectRunner): the same files and decisions as one process,
failures counted, resumable."""

import json
import os

import pytest

from helpers import raw_face_photos
from sfmnet_jax.apps import datasets
from sfmnet_jax.faces import alignment, beam_prepare, prepare
from sfmnet_jax.faces import detection as face_detection

MULTI = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
IN_PROCESS = "runner=DirectRunner,direct_num_workers=1,direct_running_mode=in_memory"
OPTIONS = dict(detector="hog", upsample=1, progress=False)


def _files(out):
  """{relative path: bytes} of every PNG prepare wrote."""
  found = {}
  for folder in ("HR", "LR_x4_bicubic", "LR_bicubic", "LR_x16_bicubic"):
    for name in os.listdir(out / folder):
      found[f"{folder}/{name}"] = (out / folder / name).read_bytes()
  return found


def _decisions(out):
  return sorted(json.loads((out / prepare.LOG_FILE).read_text())["decisions"],
                key=lambda d: d["file"])


def test_two_beam_workers_write_what_one_process_writes(tmp_path, capsys):
  raw = raw_face_photos(tmp_path / "raw", count=4)
  one = prepare.prepare(str(raw), str(tmp_path / "one"), **OPTIONS)
  assert one["written"] == 4 and one["unreadable"] == 1 and one["no_face"] == 1
  assert datasets.main(["prepare", str(raw), str(tmp_path / "beam"), "--detector=hog",
                        "--upsample=1", "--noprogress", f"--beam_pipeline_options={MULTI}"]) == 0
  assert "4 face(s) written" in capsys.readouterr().out
  assert len(_files(tmp_path / "one")) == 16
  assert _files(tmp_path / "beam") == _files(tmp_path / "one")  # byte for byte
  assert _decisions(tmp_path / "beam") == _decisions(tmp_path / "one")
  assert not os.path.exists(tmp_path / "beam" / prepare.PENDING_DIR)


def test_failures_are_counted_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
  raw = raw_face_photos(tmp_path / "raw")
  out = tmp_path / "out"
  detect = face_detection.detect

  def failing(image, *args, **kwargs):  # dlib failing on one photo (the 2-face one)
    if image.shape[:2] == (300, 500) and len(detect(image, *args, **kwargs)) == 2:
      raise RuntimeError("dlib gave up")
    return detect(image, *args, **kwargs)

  # A run killed after deciding photo_0: its decision waits in the pending folder.
  job = prepare.PhotoJob(str(raw), str(out), alignment.get_convention("celeba"), "hog", 1)
  for d in ("HR", "LR_x4_bicubic", "LR_bicubic", "LR_x16_bicubic"):
    os.makedirs(out / d)
  prepare.write_pending(str(out), job.decide("photo_0.jpg"))
  first = os.path.getmtime(out / "HR" / "photo_0.png")
  monkeypatch.setattr(face_detection, "detect", failing)
  counts = prepare.prepare(str(raw), str(out), beam_pipeline_options=IN_PROCESS, **OPTIONS)
  assert counts == {"written": 2, "no_face": 1, "too_small": 0, "unreadable": 1, "error": 1,
                    "several_faces": 0}
  log = {d["file"]: d for d in _decisions(out)}
  assert log["photo_1.jpg"] == {"file": "photo_1.jpg", "status": "error",
                                "error": "RuntimeError: dlib gave up"}
  assert log["broken.png"]["status"] == "unreadable" and "broken.png" in log["broken.png"]["error"]
  assert os.path.getmtime(out / "HR" / "photo_0.png") == first  # not decided twice
  # A rerun decides nothing again and writes nothing (errors are decisions too).
  monkeypatch.setattr(face_detection, "detect", detect)
  stamps = {p: os.path.getmtime(out / p) for p in _files(out)}
  assert prepare.prepare(str(raw), str(out), beam_pipeline_options=IN_PROCESS,
                         **OPTIONS) == counts
  assert {p: os.path.getmtime(out / p) for p in _files(out)} == stamps


def test_bad_options_and_clashing_names(tmp_path):
  with pytest.raises(ValueError, match="without dashes"):
    beam_prepare.parse_options("--runner=DirectRunner")
  with pytest.raises(ValueError, match="unknown option"):
    beam_prepare.parse_options("runner=DirectRunner,num_wrokers=2")
  assert beam_prepare.parse_options(MULTI).get_all_options()["direct_num_workers"] == 2
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "a.jpg").write_bytes(b"x")
  (raw / "a.png").write_bytes(b"x")
  with pytest.raises(ValueError, match="a.jpg and a.png would both be written as a.png"):
    prepare.prepare(str(raw), str(tmp_path / "out"), **OPTIONS)
