"""Evaluation: every metric against an independent reference, the report, inference, errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import FIXTURES, GOLDEN
from configs import demo
from sfmnet_jax import convert, infer, load_release_weights, metrics, report
from sfmnet_jax.datasets import demo_faces, demo_render, sources
from sfmnet_jax.perceptual_metrics import LPIPS, IdentityEmbedder, cosine_similarity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pairs():
  """(SR-like, HR) uint8 pairs: real faces with real degradations, and random images."""
  rng = np.random.default_rng(0)
  astro = demo_faces.astronaut_face()
  blurred = np.asarray(Image.fromarray(astro).filter(ImageFilter.GaussianBlur(1.2)))
  face = demo_render.render_face(0, 3)
  noisy = np.clip(face + rng.normal(0, 6, face.shape), 0, 255).astype(np.uint8)
  rand = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
  return [(blurred, astro), (noisy, face), (rand, rng.integers(0, 256, (128, 128, 3), np.uint8))]


def _reference_y(img):  # scikit-image's own BT.601 conversion, cropped
  return rgb2ycbcr(img.astype(np.float64) / 255.0)[8:-8, 8:-8, 0]


def test_psnr_and_both_ssims_equal_scikit_image():
  for sr, hr in _pairs():
    a, b = _reference_y(sr), _reference_y(hr)
    assert metrics.psnr_y(sr, hr) == pytest.approx(
        peak_signal_noise_ratio(b, a, data_range=255), abs=1e-4)
    assert metrics.ssim_y(sr, hr, kind="release") == pytest.approx(
        structural_similarity(a, b, data_range=255), abs=1e-4)
    assert metrics.ssim_y(sr, hr, kind="matlab") == pytest.approx(structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
        abs=1e-4)
  sr, hr = _pairs()[0]
  assert metrics.ssim_y(sr, hr, kind="release") != pytest.approx(
      metrics.ssim_y(sr, hr, kind="matlab"), abs=1e-4)  # the two windows really differ


def test_psnr_closed_form_and_quantisation():
  hr = np.full((2, 32, 32, 3), 100, np.uint8)
  sr = hr.copy()
  sr[..., 0] += 1  # one level of red everywhere: Y moves by 65.481 / 255
  np.testing.assert_allclose(metrics.psnr_y(sr, hr), 20 * np.log10(255 / (65.481 / 255)))
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
  astro = demo_faces.astronaut_face()
  blurred = np.asarray(Image.fromarray(astro).filter(ImageFilter.GaussianBlur(1.0)))
  other = demo_render.render_face(0, 1)
  e = embedder.embed_batch([astro, astro, blurred, other])
  assert e.shape == (4, 128)
  sims = cosine_similarity(e[:1].repeat(3, 0), e[1:])
  assert sims[0] == pytest.approx(1.0, abs=1e-9)
  assert sims[1] > 0.9 > sims[2], sims


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
  """5 faces (not a multiple of the batch of 4) in the release layout, no LR folder."""
  root = tmp_path_factory.mktemp("faces")
  (root / "HR").mkdir()
  for i in range(4):
    Image.fromarray(demo_render.render_face(5, i)).save(root / "HR" / f"face_{i}.png")
  Image.fromarray(demo_faces.astronaut_face()).save(root / "HR" / "astronaut.png")
  return root


def _golden_config(tmp_path, scale=8):
  cfg = demo.get_config()
  cfg.model.num_features, cfg.model.num_resblocks = 16, 2
  cfg.data.scale = scale
  cfg.data.tfds_data_dir = str(tmp_path / "tfds")
  cfg.eval_batch_size = 4
  return cfg


def test_report_every_image_once_bicubic_row_and_outputs(tmp_path, face_folder):
  cfg = _golden_config(tmp_path)
  out = tmp_path / "report"
  rep = report.evaluate_checkpoint(cfg, GOLDEN, str(out), data_dir=str(face_folder), num_grid=3)
  names = sorted(rep["per_image"])
  assert rep["count"] == 5 and names == sorted(os.listdir(face_folder / "HR"))
  assert sorted(os.listdir(out / "sr")) == names
  # The bicubic row is PIL bicubic down and up, measured like the model.
  model, variables = load_release_weights(GOLDEN)
  apply = jax.jit(model.apply)
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
  for row in rep["rows"].values():
    assert 0 < row["lpips"] < 1 and -1 <= row["identity"] <= 1 and 0 < row["ssim"] <= 1
  md = (out / "report.md").read_text()
  assert "| Bicubic | – |" in md and "| SFMNet (sfmnet_w16_s32.npz) | 0.54M |" in md
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["count"] == 5 and saved["timing"]["ms_per_image_batch1"] > 0
  assert saved["versions"]["jax"] == jax.__version__ and saved["timing"]["device"]
  g = np.asarray(Image.open(out / "grid.png"))
  assert g.shape == (3 * 128 + 2 * 2, 4 * 128 + 3 * 2, 3)  # 3 faces: LR | bicubic | SR | HR
  lr_tile = g[:128, :128].astype(int)  # the 16x16 LR, nearest-neighbour: 8x8 constant blocks
  np.testing.assert_array_equal(lr_tile, np.kron(lr_tile[::8, ::8], np.ones((8, 8, 1), int)))


def test_report_errors(tmp_path, face_folder):
  cfg = _golden_config(tmp_path)
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    report.evaluate_checkpoint(cfg, tmp_path / "nope", str(tmp_path / "o"),
                               data_dir=str(face_folder))
  x4 = tmp_path / "x4"
  assert convert.main([str(GOLDEN), str(x4), "--scale", "4"]) == 0
  with pytest.raises(ValueError, match="holds a x4 model, the config asks for x8"):
    report.evaluate_checkpoint(cfg, x4, str(tmp_path / "o"), data_dir=str(face_folder))
  wide = _golden_config(tmp_path)
  wide.model.num_features = 64
  with pytest.raises(ValueError, match="'num_features': 16.*'num_features': 64"):
    report.evaluate_checkpoint(wide, GOLDEN, str(tmp_path / "o"), data_dir=str(face_folder))
  with pytest.raises(sources.DataNotFoundError, match="face folder not found"):
    report.evaluate_checkpoint(cfg, GOLDEN, str(tmp_path / "o"), data_dir=str(tmp_path / "none"))


def test_model_labels_name_the_run():
  info = {"step": 300, "ema": True}
  assert report.model_label("runs/demo/checkpoints", info) == "SFMNet (demo, step 300, EMA)"
  assert report.model_label("runs/demo/checkpoints/300/", info) == "SFMNet (demo, step 300, EMA)"
  assert report.model_label("w/SFMNet_x8.pth", {"step": None}) == "SFMNet (SFMNet_x8.pth)"


def test_evaluate_command_prints_the_table(tmp_path, face_folder):
  converted = tmp_path / "golden_x8"
  assert convert.main([str(GOLDEN), str(converted), "--scale", "8"]) == 0
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "evaluate.py"), "--config=configs/demo.py",
       "--config.model.num_features=16", "--config.model.num_resblocks=2",
       "--config.data.scale=8", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
       f"--checkpoint={converted}", f"--data_dir={face_folder}",
       f"--output_dir={tmp_path / 'out'}", "--batch_size=4", "--noidentity"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| Bicubic |" in result.stdout and "| SFMNet (golden_x8) |" in result.stdout
  assert "identity similarity not computed" in result.stdout


def test_infer_on_files_folders_and_the_demo_portrait(tmp_path, capsys):
  inputs = tmp_path / "in"
  inputs.mkdir()
  lr = demo_render.render_face(2, 0)[::8, ::8].copy()  # a 16x16 LR face
  Image.fromarray(lr).save(inputs / "small.png")
  Image.fromarray(skimage.data.astronaut()[:300, :200]).save(inputs / "photo.jpg")
  (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  out = tmp_path / "out"
  assert infer.main(["--checkpoint", str(GOLDEN), "--scale", "8", "--input", str(inputs),
                     "--output", str(out), "--freq", "--bicubic"]) == 0
  assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
  written = sorted(os.listdir(out))
  assert written == [f"{n}_{k}_x8{f}.png" for n in ("photo", "small")
                     for k, f in (("bicubic", ""), ("sfmnet", ""), ("sfmnet", "_freq"))]
  up = np.asarray(Image.fromarray(lr).resize((128, 128), Image.BICUBIC))
  np.testing.assert_array_equal(np.asarray(Image.open(out / "small_bicubic_x8.png")), up)
  model, variables = load_release_weights(GOLDEN)
  want = np.asarray(jax.jit(model.apply)(variables, up[None].astype(np.float32) / 255)[0])[0]
  got = np.asarray(Image.open(out / "small_sfmnet_x8.png")).astype(np.float64)
  # infer runs batches of 8, whose float rounding differs from batch 1 by up to ~1e-4 (as
  # in the golden test): the PNG is the quantised output within that.
  assert np.abs(got / 255 - np.clip(want, 0, 1)).max() <= 0.5 / 255 + 1e-4
  crop = np.asarray(Image.open(inputs / "photo.jpg"))[50:250, :200]  # centre square of 300x200
  lr_photo = Image.fromarray(crop).resize((16, 16), Image.BICUBIC)
  np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_bicubic_x8.png")),
                                np.asarray(lr_photo.resize((128, 128), Image.BICUBIC)))
  assert infer.main(["--checkpoint", str(GOLDEN), "--input", str(inputs), "--output",
                     str(out)]) == 1  # a release file records no scale
  assert infer.main(["--checkpoint", str(GOLDEN), "--scale", "8", "--demo", "--output",
                     str(tmp_path / "demo")]) == 0
  assert Image.open(tmp_path / "demo" / "astronaut_sfmnet_x8.png").size == (128, 128)
