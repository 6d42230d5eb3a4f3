"""Evaluation: every metric against an independent reference, the report, inference, errors."""

import json
import os
import subprocess
import sys

import dm_pix
import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from helpers import FIXTURES, GOLDEN, RELEASE_METRICS, REPO
from configs import demo
from sfmnet_jax import accelerate, load_release_weights
from sfmnet_jax.apps import infer
from sfmnet_jax.data import astronaut, demo_render, sources
from sfmnet_jax.evaluation import metrics, report
from sfmnet_jax.evaluation.metrics import CROP
from sfmnet_jax.evaluation.perceptual import LPIPS, IdentityEmbedder, cosine_similarity
from sfmnet_jax.faces import photo
from sfmnet_jax.weights import checkpoints, convert



def _release_pairs():
  with np.load(RELEASE_METRICS) as d:
    return {k: d[k] for k in d.files}


def test_psnr_and_ssim_equal_the_release_metric_code():
  """Rounded-Y PSNR/SSIM equal what the release's own `utils/metric.py` computed.

  The expected values were computed once by tests/fixtures/make_release_metrics.py,
  which runs the release's `rgb2ycbcr`, `calc_psnr` and SSIM call on the stored pairs
  (bicubic x4/x8 faces, blur, noise, random images).
  """
  d = _release_pairs()
  np.testing.assert_allclose(metrics.psnr_y(d["sr"], d["hr"]), d["psnr"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(metrics.ssim_y(d["sr"], d["hr"]), d["ssim"], atol=1e-6, rtol=0)
  # Float Y is another protocol: it moves PSNR by hundredths of a dB on these pairs.
  assert np.abs(metrics.psnr_y(d["sr"], d["hr"], round_y=False) - d["psnr"]).max() > 5e-3


def test_matlab_ssim_equals_an_independent_implementation():
  """The 11x11 Gaussian SSIM equals dm-pix's `ssim` (its own separable filtering, in JAX).

  dm-pix runs in float64 here (jax.enable_x64) on the same cropped, rounded Y images.
  """
  d = _release_pairs()
  with jax.enable_x64(True):
    for sr, hr in zip(d["sr"], d["hr"]):
      a, b = (metrics.rgb_to_y(x)[CROP:-CROP, CROP:-CROP, None] for x in (sr, hr))
      want = float(dm_pix.ssim(a, b, max_val=255.0, filter_size=11, filter_sigma=1.5))
      assert metrics.ssim_y(sr, hr, kind="matlab") == pytest.approx(want, abs=1e-9)
  sr, hr = d["sr"][0], d["hr"][0]  # the two windows really differ
  assert abs(metrics.ssim_y(sr, hr, kind="release") - metrics.ssim_y(sr, hr, kind="matlab")) > 1e-3


def test_psnr_closed_form_and_quantisation():
  hr = np.full((2, 32, 32, 3), 100, np.uint8)
  sr = hr.copy()
  sr[..., 0] += 1  # one level of red everywhere: float Y moves by 65.481 / 255
  np.testing.assert_allclose(metrics.psnr_y(sr, hr, round_y=False),
                             20 * np.log10(255 / (65.481 / 255)))
  # Rounded Y (the default): gray 100 has Y = 100 * 219 / 255 + 16 = 101.88 -> 102; red + 1
  # gives 102.13 -> 102 (no error), gray 110 gives 110.47 -> 110: an error of 8 everywhere.
  assert metrics.psnr_y(sr, hr)[0] == np.inf
  gray = np.full((1, 32, 32, 3), 110, np.uint8)
  np.testing.assert_allclose(metrics.psnr_y(gray, hr[:1]), 20 * np.log10(255 / 8))
  assert metrics.psnr_y(hr, hr)[0] == np.inf
  # Floats are quantised like saved PNGs: 0.5/255 apart rounds to the same uint8.
  f = np.full((1, 32, 32, 3), 100 / 255, np.float32)
  assert metrics.psnr_y(f + 0.4 / 255, f)[0] == np.inf
  with pytest.raises(ValueError, match="sizes differ"):
    metrics.psnr_y(np.zeros((32, 32, 3)), np.zeros((32, 40, 3)))
  with pytest.raises(ValueError, match="too small"):
    metrics.ssim_y(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))


def test_lpips_matches_the_reference_implementation():
  load = lambda n: np.asarray(Image.open(FIXTURES / "lpips" / f"{n}.png"))[None]  # noqa: E731
  lpips = LPIPS("alexnet")
  ref = load("ex_ref")
  assert lpips(ref, load("ex_p0"))[0] == pytest.approx(0.722, abs=5e-4)
  assert lpips(ref, load("ex_p1"))[0] == pytest.approx(0.138, abs=5e-4)
  assert lpips(ref, ref)[0] == pytest.approx(0.0, abs=1e-6)


def test_identity_similarity_orders_faces():
  embedder = IdentityEmbedder()
  astro = astronaut.astronaut_face()
  blurred = np.asarray(Image.fromarray(astro).filter(ImageFilter.GaussianBlur(1.0)))
  other = demo_render.render_face(0, 1)
  e = embedder.embed_batch([astro, astro, blurred, other])
  assert e.shape == (4, 128)
  sims = cosine_similarity(e[:1].repeat(3, 0), e[1:])
  assert sims[0] == pytest.approx(1.0, abs=1e-9)
  assert sims[1] > 0.9 > sims[2], sims


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
  """5 faces (not a multiple of the batch of 4) in the release layout, no LR folder.

  They are the faces of the release-metric fixture, whose bicubic x8 values the
  release's metric code computed.
  """
  root = tmp_path_factory.mktemp("faces")
  (root / "HR").mkdir()
  d = _release_pairs()
  for name, face in zip(d["face_names"], d["faces"]):
    Image.fromarray(face).save(root / "HR" / f"{name}.png")
  return root


def _golden_config(tmp_path, scale=8):
  cfg = demo.get_config()
  cfg.model.num_features, cfg.model.num_resblocks = 16, 2
  cfg.data.scale = scale
  cfg.data.tfds_data_dir = str(tmp_path / "tfds")
  cfg.eval_batch_size = 4
  return cfg


@pytest.fixture(scope="module")
def golden_report(tmp_path_factory, face_folder):
  """(report, output dir) of the golden weights on `face_folder`, x8, float32."""
  root = tmp_path_factory.mktemp("golden_report")
  out = root / "report"
  rep = report.evaluate_checkpoint(_golden_config(root), GOLDEN, str(out),
                                   data_dir=str(face_folder), num_grid=3)
  return rep, out


def test_report_every_image_once_bicubic_row_and_outputs(face_folder, golden_report):
  rep, out = golden_report
  names = sorted(rep["per_image"])
  assert rep["count"] == 5 and names == sorted(os.listdir(face_folder / "HR"))
  assert sorted(os.listdir(out / "sr")) == names
  # The bicubic row is PIL bicubic down and up, measured like the model (which runs as
  # `evaluate.py` runs it: `accelerate`d, the C++ kernels on CPUs).
  model, variables = load_release_weights(GOLDEN)
  apply = jax.jit(accelerate(model).apply)
  psnrs, bicubic = [], []
  for name in names:
    hr = np.asarray(Image.open(face_folder / "HR" / name).convert("RGB"))
    lr = Image.fromarray(hr).resize((16, 16), Image.BICUBIC)
    up = np.asarray(lr.resize((128, 128), Image.BICUBIC))
    bicubic.append(metrics.psnr_y(up, hr))
    sr = np.asarray(apply(variables, up[None].astype(np.float32) / 255.0)[0])[0]
    psnrs.append(metrics.psnr_y(sr, hr))
    assert rep["per_image"][name]["psnr"] == pytest.approx(psnrs[-1], abs=1e-3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "sr" / name)), metrics.quantize(sr))
  assert rep["rows"]["bicubic"]["psnr"] == pytest.approx(np.mean(bicubic), abs=1e-9)
  assert rep["rows"]["model"]["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
  # The Bicubic row equals the release's metric code on the same faces (its PIL bicubic x8).
  d = _release_pairs()
  x8 = np.array([k.startswith("bicubic_x8:") for k in d["kind"]])
  assert rep["rows"]["bicubic"]["psnr"] == pytest.approx(d["psnr"][x8].mean(), abs=1e-4)
  assert rep["rows"]["bicubic"]["ssim"] == pytest.approx(d["ssim"][x8].mean(), abs=1e-5)
  # LPIPS and identity per image are those of the metric objects on the cropped images.
  first = names[0]
  hr0 = np.asarray(Image.open(face_folder / "HR" / first))[None]
  sr0 = np.asarray(Image.open(out / "sr" / first))[None]
  assert rep["per_image"][first]["lpips"] == pytest.approx(
      float(LPIPS("alexnet")(sr0[:, 8:-8, 8:-8], hr0[:, 8:-8, 8:-8])[0]), abs=2e-3)
  md = (out / "report.md").read_text()
  assert "| Bicubic | – |" in md and "| SFMNet (sfmnet_w16_s32.npz) | 0.54M |" in md
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["count"] == 5 and saved["timing"]["ms_per_image_batch1"] > 0
  assert saved["versions"]["jax"] == jax.__version__ and saved["timing"]["device"]
  g = np.asarray(Image.open(out / "grid.png"))
  assert g.shape == (3 * 128 + 2 * 2, 4 * 128 + 3 * 2, 3)  # 3 faces: LR | bicubic | SR | HR
  lr_tile = g[:128, :128].astype(int)  # the 16x16 LR, nearest-neighbour: 8x8 constant blocks
  np.testing.assert_array_equal(lr_tile, np.kron(lr_tile[::8, ::8], np.ones((8, 8, 1), int)))


def test_report_computes_in_the_config_dtype(tmp_path, face_folder, golden_report):
  """--config.dtype=bfloat16 is honoured: other outputs, other metrics, said in the report."""
  rep32, out32 = golden_report
  assert rep32["dtype"] == "float32" and rep32["title"].endswith(", x8, float32")
  cfg = _golden_config(tmp_path)
  cfg.dtype = "bfloat16"
  out = tmp_path / "bf16"
  rep = report.evaluate_checkpoint(cfg, GOLDEN, str(out), data_dir=str(face_folder),
                                   identity=False, num_grid=0)
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["dtype"] == "bfloat16" and saved["title"].endswith(", x8, bfloat16")
  assert "computed in bfloat16 (parameters, FFTs and phases in float32)" in rep["markdown"]
  names = sorted(rep["per_image"])
  assert names == sorted(rep32["per_image"])
  sr16 = np.stack([np.asarray(Image.open(out / "sr" / n), np.float64) for n in names])
  sr32 = np.stack([np.asarray(Image.open(out32 / "sr" / n), np.float64) for n in names])
  diff = np.abs(sr16 - sr32).mean() / 255  # bfloat16 rounding (8 bits of mantissa), no more
  assert 2e-4 < diff < 2e-2, diff
  psnr16 = [rep["per_image"][n]["psnr"] for n in names]
  psnr32 = [rep32["per_image"][n]["psnr"] for n in names]
  assert max(abs(a - b) for a, b in zip(psnr16, psnr32)) > 1e-3, (psnr16, psnr32)
  assert abs(np.mean(psnr16) - np.mean(psnr32)) < 0.5
  assert rep["rows"]["bicubic"] == {**rep32["rows"]["bicubic"], "identity": None}


def test_report_errors(tmp_path, face_folder):
  cfg = _golden_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    report.evaluate_checkpoint(cfg, tmp_path / "nope", str(tmp_path / "o"),
                               data_dir=str(face_folder))
  x4 = tmp_path / "x4"
  assert convert.main([str(GOLDEN), str(x4), "--scale", "4"]) == 0
  with pytest.raises(ValueError, match="holds a x4 model and the data is x8: set "
                     "--config.data.scale=4"):
    report.evaluate_checkpoint(cfg, x4, str(tmp_path / "o"), data_dir=str(face_folder))
  wide = _golden_config(tmp_path)  # the checkpoint's width wins over the config's
  wide.model.num_features = 64
  model, _, _ = report.load_generator_for(GOLDEN, wide)
  assert model.num_features == 16
  with pytest.raises(sources.DataNotFoundError, match="face folder not found"):
    report.evaluate_checkpoint(cfg, GOLDEN, str(tmp_path / "o"), data_dir=str(tmp_path / "none"))


def test_model_labels_name_the_run():
  info = {"step": 300, "ema": True}
  assert report.model_label("runs/demo/checkpoints", info) == "SFMNet (demo, step 300, EMA)"
  assert report.model_label("runs/demo/checkpoints/300/", info) == "SFMNet (demo, step 300, EMA)"
  assert report.model_label("w/SFMNet_x8.pth", {"step": None}) == "SFMNet (SFMNet_x8.pth)"


def test_evaluate_command_on_a_workdir_and_unaligned_photos(tmp_path):
  """`evaluate.py --checkpoint=WORKDIR --data_dir=PHOTOS --align=celeba`: faces are found,
  aligned and evaluated, and the report says how."""
  workdir = tmp_path / "run"  # a training workdir's layout: run/checkpoints/<step>
  assert convert.main([str(GOLDEN), str(workdir / "checkpoints"), "--scale", "8"]) == 0
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(2):
    image, _ = astronaut.astronaut_group_photo(1, (220, 300), 50, seed=i)
    Image.fromarray(image).save(photos / f"group_{i}.jpg", quality=95)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "evaluate.py"), "--config=configs/demo.py",
       "--config.data.scale=8", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
       f"--checkpoint={workdir}", f"--data_dir={photos}", "--align=celeba",
       f"--output_dir={tmp_path / 'out'}", "--batch_size=4", "--noidentity"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| Bicubic |" in result.stdout and "| SFMNet (run) |" in result.stdout
  assert "identity similarity not computed" in result.stdout
  assert "Faces aligned from photos (celeba convention): 2 written, 0 without a face" in \
      result.stdout
  saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert saved["count"] == 2 and saved["alignment"]["convention"] == "celeba"
  assert sorted(os.listdir(tmp_path / "out" / "aligned" / "HR")) == ["group_0.png", "group_1.png"]


def test_infer_on_crops_photos_and_the_demo_group_photo(tmp_path, capsys):
  inputs = tmp_path / "in"
  inputs.mkdir()
  lr = demo_render.render_face(2, 0)[::8, ::8].copy()  # a 16x16 LR face
  Image.fromarray(lr).save(inputs / "small.png")
  Image.fromarray(skimage.data.astronaut()[:300, :200]).save(inputs / "photo.jpg")
  (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  out = tmp_path / "out"
  assert infer.main(["--checkpoint", str(GOLDEN), "--scale", "8", "--input", str(inputs),
                     "--output", str(out), "--freq", "--bicubic", "--nodetect"]) == 0
  assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
  log = json.loads((out / "infer_log.json").read_text())
  assert [(d["file"], d["status"]) for d in log["files"]] == [
      ("broken.png", "unreadable"), ("photo.jpg", "crop"), ("small.png", "crop")]
  written = sorted(n for n in os.listdir(out) if n != "infer_log.json")
  assert written == [f"{n}_{k}_x8{f}.png" for n in ("photo", "small")
                     for k, f in (("bicubic", ""), ("sfmnet", ""), ("sfmnet", "_freq"))]
  up = np.asarray(Image.fromarray(lr).resize((128, 128), Image.BICUBIC))
  np.testing.assert_array_equal(np.asarray(Image.open(out / "small_bicubic_x8.png")), up)
  # The PNG is the quantised output of the model infer loads (in this backend's mode), on
  # the bicubic upsampling, at infer's batch size (its rounding depends on the batch size).
  model, variables, _ = checkpoints.load_generator(str(GOLDEN), scale=8)
  assert photo.BATCH > 1
  _, want, _ = photo.super_resolve(model, variables, lr[None])
  got = np.asarray(Image.open(out / "small_sfmnet_x8.png")).astype(np.float64)
  assert np.abs(got / 255 - np.clip(want[0], 0, 1)).max() <= 0.5 / 255 + 1e-6
  plain, plain_vars = load_release_weights(GOLDEN)  # the PNG holds a face, not a blank
  assert np.abs(got / 255 - np.asarray(jax.jit(plain.apply)(
      plain_vars, up[None].astype(np.float32) / 255)[0])[0]).mean() < 1e-2
  crop = np.asarray(Image.open(inputs / "photo.jpg"))[50:250, :200]  # centre square of 300x200
  lr_photo = Image.fromarray(crop).resize((16, 16), Image.BICUBIC)
  np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_bicubic_x8.png")),
                                np.asarray(lr_photo.resize((128, 128), Image.BICUBIC)))
  assert infer.main(["--checkpoint", str(GOLDEN), "--input", str(inputs), "--output",
                     str(out)]) == 1  # a release file records no scale
  # The whole-photo pipeline from the command line, on the built-in group photo at x4.
  x4 = tmp_path / "x4"
  assert convert.main([str(GOLDEN), str(x4), "--scale=4"]) == 0
  demo_out = tmp_path / "demo"
  assert infer.main(["--checkpoint", str(x4), "--demo", "--output",
                     str(demo_out)]) == 0
  assert "3 face(s), 3 restored" in capsys.readouterr().out
  assert Image.open(demo_out / "astronaut_group_restored_x4.png").size == (360 * 4, 240 * 4)
  faces = json.loads((demo_out / "astronaut_group_faces.json").read_text())
  assert [f["status"] for f in faces["faces"]] == ["restored"] * 3
  assert len(faces["faces"][0]["landmarks5"]) == 5 and faces["restored_size"] == [1440, 960]
  assert Image.open(demo_out / "astronaut_group_face01_lr.png").size == (32, 32)
  assert Image.open(demo_out / "astronaut_group_face03_sfmnet_x4.png").size == (128, 128)
  annotated = np.asarray(Image.open(demo_out / "astronaut_group_faces.png"))
  assert annotated.shape[1] >= 512
