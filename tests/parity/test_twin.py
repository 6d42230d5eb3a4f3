"""The twin harness: its statistics on closed-form cases, the whole harness against a
PyTorch-free fake release, and real twins of a few steps when the release and torch are here
(SFMNET_RELEASE_DIR, and SFMNET_RELEASE_PYTHON: a Python with torch and einops)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import fake_release
import helpers
from helpers import REPO
from sfmnet_jax.data import demo_render
from sfmnet_jax.data import pipeline
from sfmnet_jax.parity import pairs, port_side, stats, twin
from sfmnet_jax.parity.checkout import ReleaseUnavailable
from sfmnet_jax.parity.worker import ReleaseWorker

FAKE = [sys.executable, fake_release.__file__]


def test_curve_comparison_on_equal_diverging_and_noisy_curves():
  release = np.linspace(0.3, 0.1, 50)
  assert stats.compare_curves(release, release) == {
      "first_divergence_step": None, "median_rel_loss_diff": 0.0, "max_rel_loss_diff": 0.0}
  drifting = release * (1 + 0.003 * np.arange(50))  # 0.9% at step 3, 1.2% at step 4
  out = stats.compare_curves(release, drifting)
  assert out["first_divergence_step"] == 4
  assert out["median_rel_loss_diff"] == pytest.approx(np.median(0.003 * np.arange(50)))
  noise = np.random.default_rng(0).normal(0, 0.004, 50)
  out = stats.compare_curves(release, release * (1 + noise))
  over = np.flatnonzero(np.abs(noise) > 0.01)
  assert out["first_divergence_step"] == (int(over[0]) if over.size else None)
  assert out["median_rel_loss_diff"] == pytest.approx(np.median(np.abs(noise)), rel=1e-9)
  broken = release.copy()
  broken[7] = np.nan
  assert stats.compare_curves(release, broken)["first_divergence_step"] == 7
  with pytest.raises(ValueError, match="cannot be compared"):
    stats.compare_curves(release, release[:-1])


def test_per_term_divergence_shows_a_one_sided_drift():
  """A term drifting to one side has a signed mean of its size; noise averages out."""
  n = 200
  release = [{"a": 1.0, "b": 2.0, "seconds": 1.0} for _ in range(n)]
  rng = np.random.default_rng(1)
  noise = rng.normal(0, 0.002, n)
  port = [{"a": 1.0 * (1 - 0.003), "b": 2.0 * (1 + e), "seconds": 9.0} for e in noise]
  port[50]["a"] = 1.0 * 1.02  # one step past 1%
  out = stats.term_divergence(release, port)
  assert set(out) == {"a", "b"}
  assert out["a"]["first_step_over"] == 50 and out["b"]["first_step_over"] is None
  assert out["a"]["median_rel_diff"] == pytest.approx(0.003)
  assert out["a"]["mean_signed_rel_diff"] == pytest.approx((-0.003 * 199 + 0.02) / 200)
  assert out["b"]["mean_signed_rel_diff"] == pytest.approx(noise.mean())


def test_parameter_distance_and_output_agreement_in_closed_form():
  init = {"w": np.zeros(4), "v": np.zeros(2)}
  release = {"w": np.array([3.0, 0, 0, 0]), "v": np.array([0.0, 4.0])}  # moved by 5
  port = {"w": np.array([3.0, 0, 0, 1.0]), "v": np.array([0.0, 4.0])}  # 1 apart, in w
  out = stats.parameter_distance(release, port, init)
  assert out["global"] == pytest.approx(1 / 5) and out["release_moved"] == pytest.approx(5)
  assert out["worst_tensor"] == "w" and out["worst_tensor_ratio"] == pytest.approx(1 / 3)
  assert stats.parameter_distance(init, init, init)["global"] is None  # nothing moved yet
  with pytest.raises(ValueError, match="parameter sets differ"):
    stats.parameter_distance(release, {"w": port["w"]}, init)
  a = np.full((2, 4, 4, 3), 0.5)
  b = a.copy()
  b[0, 0, 0, 0] += 0.1  # one value of 96 off by 0.1: MSE 1e-4 / 9.6
  out = stats.output_agreement(a, b)
  assert out["max_abs_diff"] == pytest.approx(0.1)
  assert out["psnr_between"] == pytest.approx(10 * np.log10(96 / 0.01))
  assert stats.output_agreement(a, a)["psnr_between"] == float("inf")


def test_gradient_agreement_in_closed_form():
  release = {"a": np.array([3.0, 4.0]), "b": np.array([[1.0, 0.0]]), "zero": np.zeros(2)}
  port = {"a": np.array([3.0, 4.5]), "b": np.array([[1.0, 0.0]]), "zero": np.zeros(2)}
  out = stats.gradient_agreement(release, port)
  assert out["worst_tensor"] == "a" and out["worst_rel_diff"] == pytest.approx(0.5 / 5)
  assert out["median_rel_diff"] == pytest.approx(0.05)  # median of 0.1 and 0 ("zero" skipped)
  assert out["global_rel_diff"] == pytest.approx(0.5 / np.sqrt(26))
  assert out["cosine"] == pytest.approx((9 + 18 + 1) / np.sqrt(26 * (9 + 20.25 + 1)))
  with pytest.raises(ValueError, match="other tensors"):
    stats.gradient_agreement(release, {"a": port["a"]})


def test_paired_equivalence_against_its_closed_form():
  """Differences 0, 0.01, ..., 0.04 dB: mean 0.02, s = 0.0158, the 90% interval is
  mean +- t(0.95, 4) s / sqrt(5) = 0.02 +- 2.1318 x 0.00707 (closed form, t from tables)."""
  release = np.zeros(5)
  port = np.array([0.0, 0.01, 0.02, 0.03, 0.04])
  out = stats.paired_equivalence(release, port, margin=0.05)
  half = 2.131847 * np.std(port, ddof=1) / np.sqrt(5)
  assert out["mean_difference"] == pytest.approx(0.02)
  assert out["interval"] == pytest.approx([0.02 - half, 0.02 + half], rel=1e-5)
  assert out["verdict"] == "equivalent" and max(out["tost_p_values"]) < 0.05
  assert stats.paired_equivalence(release, port, margin=0.03)["verdict"] == "undecided"
  assert stats.paired_equivalence(release, port + 0.2, margin=0.05)["verdict"] == "different"
  # The pairing matters: a shared offset per pair cancels in the differences.
  offsets = np.array([1.0, -2.0, 0.5, 3.0, -1.0])
  assert stats.paired_equivalence(release + offsets, port + offsets, 0.05)["interval"] == \
      pytest.approx(out["interval"])
  with pytest.raises(ValueError, match="at least 2 pairs"):
    stats.paired_equivalence([0.0], [0.0], 0.05)


def _faces(root, n, offset):
  (root / "HR").mkdir(parents=True)
  for i in range(n):
    Image.fromarray(demo_render.render_face(7, offset + i)).save(root / "HR" / f"{i:03d}.png")
  return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("twin")
  return _faces(root / "train", 12, 0), _faces(root / "test", 3, 500)


def _config(folders, **overrides):
  """The demo config, shrunk: width 8, one ResBlock per group, x8 on 32 px patches of the
  fixture's faces, batch 4, 3 steps, evaluations at 0, 2 and 3."""
  from sfmnet_jax.apps import config_files  # pylint: disable=g-import-not-at-top
  config_files.make_importable()
  from configs import demo  # pylint: disable=g-import-not-at-top
  cfg = demo.get_config()
  cfg.model.num_features, cfg.model.num_resblocks = 8, 1
  cfg.data.source, cfg.data.scale, cfg.data.patch_size = "folder", 8, 32
  cfg.data.train_dir, cfg.data.test_dir = str(folders[0]), str(folders[1])
  cfg.data.tfds_data_dir = str(folders[0].parent / "tfds")
  cfg.batch_size, cfg.num_train_steps, cfg.eval_every = 4, 3, 2
  return helpers.override(cfg, overrides)


def test_harness_against_a_fake_release(folders, tmp_path, monkeypatch):
  """Two pairs with the fake: the release side is fed exactly the port's batches (its loss is
  recomputed here from the same pipeline), its outputs are scored by the project's protocol
  (an identity network scores bicubic), both networks are compared at every evaluation (the
  fake's weights move by a known amount), a non-finite step is counted, and the report,
  pictures, kept generators and the paired study appear; run again, it resumes."""
  monkeypatch.setenv("FAKE_NONFINITE_STEP", "1")
  cfg = _config(folders)
  out = tmp_path / "out"
  result = twin.run(cfg, None, str(out), seeds=2, worker_command=FAKE, log=lambda *a: None)
  saved = json.loads((out / "twin_seeds.json").read_text())
  assert len(saved["pairs"]) == 2 and saved["release_behaviour"]["init"]
  assert saved["config"]["model"]["num_features"] == 8
  for pair in saved["pairs"]:
    from sfmnet_jax.data import sources  # pylint: disable=g-import-not-at-top
    split = sources.get_split(cfg.data, "train")
    sharding = pipeline.Sharding(4, local_devices=jax.local_device_count())
    batches = pipeline.TrainIterator(split, 8, sharding, seed=pair["seed"], patch_size=32)
    for step in range(3):
      b = {k: v.reshape(-1, *v.shape[2:]) for k, v in next(batches).items()}
      want, _ = fake_release.loss_terms(b["lr_up"], b["hr"])
      got = pair["curves"]["release"][step]["total"]
      assert np.isnan(got) if step == 1 else got == pytest.approx(want, rel=1e-12)
    assert pair["nonfinite_steps"] == {"release": 1, "port_skipped": 0}
    assert [e["step"] for e in pair["evals"]] == [0, 2, 3]
    release = pair["release"]
    assert release["psnr"] == release["bicubic_psnr"] and release["psnr_gain"] == 0.0
    assert pair["port"]["bicubic_psnr"] == release["bicubic_psnr"]
    assert pair["abs_psnr_diff_over_gain"] == pytest.approx(
        abs(pair["psnr_difference"]) / abs(pair["port"]["psnr_gain"] / 2))
    assert set(pair["terms"]) == {"l1_out", "l1_fre", "amplitude", "phase"}
    # At step 0 both start from the same weights; after k steps the fake moved every value
    # by k * STEP_SIZE; the kept generators give the reported distance.
    start, end = pair["evals"][0]["parameters"]["generator"], \
        pair["evals"][-1]["parameters"]["generator"]
    assert start["apart"] == 0.0 and start["global"] is None
    kept = {side: dict(np.load(out / "pairs" / f"seed{pair['seed']}" / f"{side}_generator.npz"))
            for side in ("release", "port")}
    n = sum(v.size for v in kept["release"].values())
    assert end["release_moved"] == pytest.approx(3 * fake_release.STEP_SIZE * np.sqrt(n),
                                                 rel=1e-3)
    apart = np.sqrt(sum(np.sum((kept["release"][k].astype(np.float64) - kept["port"][k]) ** 2)
                        for k in kept["release"]))
    assert end["apart"] == pytest.approx(apart, rel=1e-6)
    assert pair["evals"][0]["outputs"]["max_abs_diff"] > 0  # the port's network is not identity
    # The gradients at the release's weights: the fake's are the plain model's, the port's
    # the config's CPU mode, on the same 16 px centres of the 3 test faces; names and
    # layouts line up tensor by tensor (a transposed or misnamed tensor would be O(1) apart;
    # at width 8 with random weights some bins flip their phase under rounding, so the bound
    # is loose), and the port's noise floor is measured.
    for e in pair["evals"]:
      g = e["gradients"]
      assert g["median_rel_diff"] < 0.1 and g["cosine"] > 0.95, g
      assert 0 < g["noise_floor"]["median_rel_diff"] < 1, g
  assert saved["pairs"][0]["curves"]["release"] != saved["pairs"][1]["curves"]["release"]
  study = saved["seeds_study"]
  assert study["psnr_gain"]["release"]["values"] == [0.0, 0.0]
  assert study["equivalence"]["differences"] == [p["port"]["psnr_gain"]
                                                 for p in saved["pairs"]]
  assert study["equivalence"]["margin"] == 0.05
  assert study["terms_mean_signed_rel_diff"]["l1_out"] == [
      p["terms"]["l1_out"]["mean_signed_rel_diff"] for p in saved["pairs"]]
  for name in ("twin_losses.png", "twin_psnr.png", "twin_differences.png"):
    assert np.asarray(Image.open(out / name)).std() > 5  # a drawing, not a blank
  assert result["seeds_study"] == study
  # Run again: both pairs are reused from OUT/pairs, measured times included (a rerun
  # would time its steps anew); another config does not reuse them.
  (out / "twin_seeds.json").unlink()
  again = twin.run(cfg, None, str(out), seeds=2, worker_command=FAKE, log=lambda *a: None)
  assert again["seeds_study"] == study
  assert again["port"]["seconds_per_step"] == result["port"]["seconds_per_step"]
  assert pairs.load(str(out), 0, {"other": "settings"}) is None


def test_the_port_as_reference_trains_against_itself(folders, tmp_path):
  """`--reference=port:...`: the port's worker (another process) in the port's own mode
  trains exactly as the port does, from its own initial weights round-tripped through the
  release's state_dict names (every loss, output and parameter equal); the report says what
  the reference was. A field the config lacks is refused by the worker, by name."""
  cfg = _config(folders)
  reference = twin.port_reference([f"model.cpu_trig={cfg.model.cpu_trig}"])
  result = twin.run(cfg, None, str(tmp_path / "same"), reference=reference, log=lambda *a: None)
  assert result["reference"] == {"kind": "port", "changes": ["model.cpu_trig=poly"],
                                 "label": "port (model.cpu_trig=poly)"}
  assert "release_behaviour" not in result and result["release_dir"] is None
  assert "port's initial generator" in result["initialisation"]
  assert result["max_rel_loss_diff"] <= 1e-6
  for side in ("release", "port"):
    assert all(c["finite"] for c in result["curves"][side])
  from sfmnet_jax.model.generator import SFMNet, init_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights.release import params_to_state_dict  # pylint: disable=g-import-not-at-top
  init = params_to_state_dict(init_generator(SFMNet(num_features=8, num_resblocks=1), 0)["params"])
  kept = dict(np.load(tmp_path / "same" / "pairs" / "seed0" / "release_generator.npz"))
  moved = np.sqrt(sum(np.sum((kept[k].astype(np.float64) - init[k]) ** 2) for k in init))
  assert moved > 0  # the reference trained from the port's initial weights
  for e in result["evals"]:
    assert e["outputs"]["max_abs_diff"] <= 1e-6, e["outputs"]
    assert e["parameters"]["generator"]["apart"] <= 1e-6 * max(moved, 1.0)
    assert e["gradients"]["median_rel_diff"] <= 1e-6
  with pytest.raises(ReleaseUnavailable, match="no config field model.nope"):
    twin.run(cfg, None, str(tmp_path / "bad"), reference=twin.port_reference(["model.nope=1"]),
             log=lambda *a: None)
  with pytest.raises(twin.ConfigUnsupported, match="FIELD=VALUE"):
    twin.port_reference([])


def test_both_sides_can_start_from_the_ports_initial_generator(folders, tmp_path):
  """`init="port"`: the release side is handed the port's initial generator for the seed
  (the fake, as the release, loads it and moves it by STEP_SIZE per step); `init_from` and
  `init="port"` together are refused."""
  cfg = _config(folders, num_train_steps=1, eval_every=0, seed=5)
  result = twin.run(cfg, None, str(tmp_path), worker_command=FAKE, init="port",
                    log=lambda *a: None)
  assert "port's initial generator" in result["release_behaviour"]["init"]
  start = port_side.port_initial_generator(cfg)
  kept = dict(np.load(tmp_path / "pairs" / "seed5" / "release_generator.npz"))
  assert set(kept) == set(start)
  for k in start:
    np.testing.assert_allclose(kept[k], start[k] + np.float32(fake_release.STEP_SIZE),
                               rtol=0, atol=1e-6)
  assert result["evals"][0]["parameters"]["generator"]["apart"] == 0.0
  with pytest.raises(twin.ConfigUnsupported, match="both choose"):
    twin.run(_config(folders, init_from="x.npz"), None, str(tmp_path), worker_command=FAKE,
             init="port")


def test_the_port_workers_config_changes(folders):
  """The reference's `--set` changes land on the twin's config (literals parsed, strings
  kept); malformed or unknown fields are refused by name."""
  from sfmnet_jax.parity import port_worker  # pylint: disable=g-import-not-at-top
  cfg = _config(folders)
  changes = port_worker.overrides(["model.conv_impl=xla", "optimizer.eps=1e-6", "seed=3"])
  assert changes == {("model", "conv_impl"): "xla", ("optimizer", "eps"): 1e-6, ("seed",): 3}
  changed = port_worker.configure(cfg.to_dict(), changes)
  assert (changed.model.conv_impl, changed.optimizer.eps, changed.seed) == ("xla", 1e-6, 3)
  assert changed.model.num_features == 8 and cfg.model.conv_impl == "auto"
  with pytest.raises(ValueError, match="FIELD=VALUE"):
    port_worker.overrides(["model.conv_impl"])
  with pytest.raises(ValueError, match="no config field data.nope.deeper"):
    port_worker.configure(cfg.to_dict(), {("data", "nope", "deeper"): 1})


def test_configs_the_release_cannot_train_are_refused(folders, tmp_path):
  for overrides, message in (({"optimizer.lr_decay_steps": (10,)}, "constant learning rate"),
                             ({"model.share_fusion_attention": False}, "shares the fusion"),
                             ({"stage": "gan"}, "set init_from"),
                             ({"num_train_steps": -1}, "num_train_steps must be > 0")):
    with pytest.raises(twin.ConfigUnsupported, match=message):
      twin.run(_config(folders, **overrides), None, str(tmp_path), worker_command=FAKE)


def test_a_missing_release_says_what_to_get(tmp_path):
  with pytest.raises(ReleaseUnavailable, match="git clone https://github.com/wcy-cs/SFMNet"):
    ReleaseWorker(str(tmp_path))
  with pytest.raises(ReleaseUnavailable, match="--release_python"):
    ReleaseWorker(None, command=[str(tmp_path / "no_python")])


RELEASE_DIR = os.environ.get("SFMNET_RELEASE_DIR", os.path.join(REPO, "..", "SFMNet"))
RELEASE_PYTHON = os.environ.get("SFMNET_RELEASE_PYTHON", sys.executable)


def _release_runs():
  if not os.path.isfile(os.path.join(RELEASE_DIR, "models", "mynet.py")):
    return False
  probe = subprocess.run([RELEASE_PYTHON, "-c", "import torch, einops"], capture_output=True,
                         check=False)
  return probe.returncode == 0


needs_release = pytest.mark.skipif(not _release_runs(), reason=(
    "a real twin needs the release (git clone https://github.com/wcy-cs/SFMNet; "
    "SFMNET_RELEASE_DIR=its path) and a Python with torch and einops (SFMNET_RELEASE_PYTHON)"))


@needs_release
def test_a_real_twin_of_a_few_steps(folders, tmp_path):
  cfg = _config(folders, **{"num_train_steps": 4, "model.conv_impl": "xla",
                            "optimizer.learning_rate": 1e-4})
  result = twin.run(cfg, RELEASE_DIR, str(tmp_path), release_python=RELEASE_PYTHON,
                    log=lambda *a: None)
  first = result["curves"]
  assert first["port"][0]["total"] == pytest.approx(first["release"][0]["total"], rel=1e-5)
  for term in ("l1_out", "l1_fre", "amplitude", "phase"):
    assert first["port"][0][term] == pytest.approx(first["release"][0][term], rel=1e-5), term
  assert result["median_rel_loss_diff"] < 0.01
  assert result["evals"][0]["outputs"]["max_abs_diff"] < 1e-4  # the same network at step 0
  assert abs(result["port"]["psnr"] - result["release"]["psnr"]) < 0.1


@needs_release
def test_a_real_gan_twin_starts_equal(folders, tmp_path):
  """The GAN stage from the golden generator, both discriminators from the release's init,
  one fixed random VGG19 on both sides: every term of the first step agrees."""
  from helpers import GOLDEN
  cfg = _config(folders, **{"num_train_steps": 1, "model.num_features": 16,
                            "model.num_resblocks": 2, "model.conv_impl": "xla",
                            "data.patch_size": None, "stage": "gan",
                            "init_from": str(GOLDEN), "optimizer.learning_rate": 1e-4,
                            "d_optimizer.learning_rate": 1e-4})
  result = twin.run(cfg, RELEASE_DIR, str(tmp_path), release_python=RELEASE_PYTHON,
                    log=lambda *a: None)
  release, port = result["curves"]["release"][0], result["curves"]["port"][0]
  # At 128x128 the generator's phase flips by 2*pi on a few bins under rounding (the
  # release's own output moves under 1e-6 noise), which moves the terms by ~0.1% here;
  # a wrong weight, formula or input moves them by far more than the 1% allowed.
  for term in ("l1_out", "l1_fre", "amplitude", "perceptual", "adv_spatial", "adv_frequency",
               "d_spatial_loss", "d_frequency_loss"):
    assert port[term] == pytest.approx(release[term], rel=1e-2), term
  assert port["perceptual"] > 1e-4  # a random VGG19 whose deep features keep their scale
  assert "random VGG19" in result["release_behaviour"]["perceptual"]
