"""Training: pmap equivalence, loss decrease, the GAN step, NaN skips, exact resume, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from conftest import FAST_COMPILE_FLAGS
from sfmnet_jax import losses, train_steps, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tfds_dir, **overrides):
  cfg = demo.get_config()
  cfg.model.num_features = 8
  cfg.model.num_resblocks = 1
  cfg.data.patch_size = 32
  cfg.data.tfds_data_dir = str(tfds_dir)
  cfg.data.demo_num_train = 16
  cfg.data.demo_num_test = 4
  cfg.batch_size = 4
  cfg.eval_batch_size = 4
  cfg.log_every = 1
  cfg.eval_every = 1000
  cfg.num_sample_images = 1
  cfg.optimizer.eps = 1e-3  # smooth Adam updates: comparisons across device counts are stable
  for key, value in overrides.items():
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return cfg


def cli_overrides(cfg_overrides):
  return [f"--config.{k}={v}" for k, v in cfg_overrides.items()]


TINY_CLI = {"model.num_features": 8, "model.num_resblocks": 1, "data.patch_size": 32,
            "data.demo_num_train": 16, "data.demo_num_test": 4, "batch_size": 4,
            "eval_batch_size": 4, "log_every": 1, "eval_every": 1000, "num_sample_images": 1,
            "optimizer.eps": 0.001}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _batch(seed, n_dev, per_dev, size=32):
  rng = np.random.default_rng(seed)
  hr = rng.uniform(size=(n_dev * per_dev, size, size, 3)).astype(np.float32)
  lr_up = np.clip(hr + rng.normal(0, 0.05, hr.shape), 0, 1).astype(np.float32)
  shape = (n_dev, per_dev, size, size, 3)
  return {"hr": hr.reshape(shape), "lr_up": lr_up.reshape(shape)}


def _run_psnr_steps(cfg, n_dev, batches, start_states=None):
  """Runs PSNR steps on `n_dev` devices; returns [(state, metrics)] after each batch.

  With `start_states`, step i starts from `start_states[i]` instead of the previous result.
  """
  model = training.build_model(cfg)
  state, static, _ = training.create_state(cfg, model)
  step = jax.pmap(lambda s, b: train_steps.psnr_step(s, b, **static), axis_name=train_steps.AXIS,
                  devices=jax.local_devices()[:n_dev])
  out = []
  for i, b in enumerate(batches):
    if start_states is not None:
      state = start_states[i]
    mesh_state = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n_dev), state)
    mesh_state, metrics = step(mesh_state, b)
    state, metrics = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), (mesh_state, metrics))
    out.append((state, metrics))
  return out, static


def test_pmap_on_4_devices_equals_one_device(tfds_dir):
  assert jax.local_device_count() >= 4
  cfg = tiny_config(tfds_dir)
  global_batches = [_batch(i, 4, 2) for i in range(2)]
  four, _ = _run_psnr_steps(cfg, 4, global_batches)
  # Each 1-device step starts from the 4-device state before it, so every comparison is of
  # one step: differences are the all-reduce's float rounding only. (Chained steps would
  # let rounding move a spectrum bin across the phase's +-pi cut, a genuine kink of the
  # release's loss, after which the runs differ by more than rounding.)
  model = training.build_model(cfg)
  initial, _, _ = training.create_state(cfg, model)
  one, _ = _run_psnr_steps(cfg, 1, [{k: v.reshape(1, 8, *v.shape[2:]) for k, v in b.items()}
                                    for b in global_batches],
                           start_states=[initial, four[0][0]])
  lr = cfg.optimizer.learning_rate
  for (s4, m4), (s1, m1) in zip(four, one):
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
    diff = np.abs(s4.generator["params"] - s1.generator["params"])
    assert diff.max() < 1e-3 * lr and diff.mean() < 1e-5 * lr, (diff.max(), diff.mean())
    assert int(s4.step) == int(s1.step)
  assert not np.allclose(four[1][0].generator["params"], four[0][0].generator["params"])


def test_non_finite_update_is_skipped_and_counted(tfds_dir):
  cfg = tiny_config(tfds_dir)
  bad = _batch(0, 1, 8)  # the shapes of the test above: its compiled step is reused
  bad["lr_up"][0, 0, 3, 3, 0] = np.nan
  results, _ = _run_psnr_steps(cfg, 1, [bad, _batch(1, 1, 8)])
  (s_bad, m_bad), (s_ok, m_ok) = results
  model = training.build_model(cfg)
  initial, _, _ = training.create_state(cfg, model)
  np.testing.assert_array_equal(s_bad.generator["params"], initial.generator["params"])
  assert int(s_bad.skipped_updates) == 1 and float(m_bad["finite"]) == 0.0
  assert int(s_bad.step) == 1  # the step is counted, only the update is skipped
  assert np.isfinite(s_ok.generator["params"]).all() and int(s_ok.skipped_updates) == 1
  assert not np.array_equal(s_ok.generator["params"], s_bad.generator["params"])


def test_gan_step_updates_all_three_networks(tfds_dir):
  cfg = tiny_config(tfds_dir, stage="gan", **{"perceptual.weights": "random"})
  model = training.build_model(cfg)
  state, static, vgg_params = training.create_state(cfg, model)
  step = jax.pmap(lambda s, b, v: train_steps.gan_step(s, b, v, **static),
                  axis_name=train_steps.AXIS, devices=jax.local_devices()[:1])
  rep = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], t)  # noqa: E731
  new, metrics = step(rep(state), _batch(3, 1, 2), rep(vgg_params))
  new = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), new)
  for net in ("generator", "d_spa", "d_fre"):
    before, after = getattr(state, net)["params"], getattr(new, net)["params"]
    assert np.isfinite(after).all() and not np.array_equal(before, after), net
  for k in ("perceptual", "adv_spatial", "adv_frequency", "d_spatial_loss", "d_frequency_loss"):
    assert np.isfinite(metrics[k]).all() and float(metrics[k][0]) > 0, k
  # At initialisation the discriminators are unsure: BCE near log 2 per term.
  assert abs(float(metrics["d_spatial_loss"][0]) - 2 * np.log(2)) < 0.2


def test_release_gradient_quirks():
  """The release's detaches, as options: perceptual without gradient; D_fre blind to fakes."""
  w = jax.random.normal(jax.random.key(0), (3, 5))
  features = lambda x: jnp.tanh(x @ w)  # noqa: E731
  sr, hr = jax.random.uniform(jax.random.key(1), (2, 4, 3)), jnp.zeros((2, 4, 3))
  grad = lambda detach: jax.grad(  # noqa: E731
      lambda x: losses.perceptual_loss(features, x, hr, detach))(sr)
  assert np.abs(grad(False)).sum() > 0 and np.array_equal(grad(True), np.zeros_like(sr))

  def d_grad(detach, fake):
    return jax.grad(lambda v: losses.discriminator_loss(
        lambda x: jnp.sum(x * v, axis=(1, 2)), hr + 1.0, fake, 0.1, detach))(jnp.ones((4, 3)))

  fake_a, fake_b = sr, sr * 2.0
  assert not np.allclose(d_grad(False, fake_a), d_grad(False, fake_b))
  np.testing.assert_array_equal(d_grad(True, fake_a), d_grad(True, fake_b))  # only HR counts
  real_only = jax.grad(lambda v: 0.1 * losses.bce_with_logits(
      jnp.sum((hr + 1.0) * v, axis=(1, 2)), 1.0))(jnp.ones((4, 3)))
  np.testing.assert_allclose(d_grad(True, fake_a), real_only, rtol=1e-6)


def _read_jsonl(path):
  out = {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row  # a resumed run rewrites the steps after its checkpoint
  return out


def _train_cmd(workdir, tfds, **overrides):
  cli = dict(TINY_CLI, **{"data.tfds_data_dir": str(tfds)}, **overrides)
  return [sys.executable, os.path.join(REPO, "train.py"), f"--workdir={workdir}"] + \
      cli_overrides(cli)


def _env(devices=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count={devices}"
  return env


def _wait_for_step(proc, jsonl, step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(jsonl) and max(_read_jsonl(jsonl), default=0) >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
    time.sleep(0.2)
  raise AssertionError("timed out waiting for training")


def test_loss_decreases_and_sigkill_resume_is_exact(tmp_path, tfds_dir):
  steps = {"num_train_steps": 14, "checkpoint_every": 4}
  ref_dir, kill_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  subprocess.run(_train_cmd(ref_dir, tfds_dir, **steps), env=_env(), check=True,
                 capture_output=True, cwd=REPO)
  ref = _read_jsonl(ref_dir / "metrics.jsonl")
  assert sorted(ref) == list(range(1, 15))
  first, last = np.mean([ref[s]["loss"] for s in (1, 2, 3)]), np.mean(
      [ref[s]["loss"] for s in (12, 13, 14)])
  assert last < 0.8 * first, (first, last)
  assert os.path.exists(ref_dir / "samples" / "step_0000014.png")

  proc = subprocess.Popen(_train_cmd(kill_dir, tfds_dir, **steps), env=_env(), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(proc, kill_dir / "metrics.jsonl", 10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = max(_read_jsonl(kill_dir / "metrics.jsonl"))
  assert done_before < 14
  result = subprocess.run(_train_cmd(kill_dir, tfds_dir, **steps), env=_env(), cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from" in result.stderr
  resumed = _read_jsonl(kill_dir / "metrics.jsonl")
  assert sorted(resumed) == list(range(1, 15))
  for s in range(1, 15):
    np.testing.assert_allclose(resumed[s]["loss"], ref[s]["loss"], rtol=1e-6, err_msg=f"step {s}")


def test_sigterm_writes_a_checkpoint(tmp_path, tfds_dir):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(_train_cmd(workdir, tfds_dir, num_train_steps=10_000,
                                     checkpoint_every=10_000),
                          env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  _wait_for_step(proc, workdir / "metrics.jsonl", 3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM: checkpoint written" in err
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and steps[0] == max(_read_jsonl(workdir / "metrics.jsonl")) >= 3


def test_missing_data_exits_with_instructions(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"), "--config=configs/helen_x8.py",
       f"--workdir={tmp_path / 'w'}", f"--config.data.train_dir={tmp_path / 'no_helen'}"],
      env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "data.train_dir: face folder not found" in result.stderr
  assert "python train.py` with no arguments trains on the built-in demo" in result.stderr


def test_two_process_distributed_equals_one_process(tmp_path, tfds_dir):
  """jax.distributed on localhost (gloo): 2 processes x 1 CPU device = 1 process x 2 devices."""
  steps = {"num_train_steps": 3, "checkpoint_every": 3}
  single = tmp_path / "single"
  subprocess.run(_train_cmd(single, tfds_dir, **steps), env=_env(devices=2), check=True,
                 capture_output=True, cwd=REPO)
  port = 20000 + os.getpid() % 20000
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      _train_cmd(multi, tfds_dir, **steps, **{
          "distributed.enabled": True, "distributed.coordinator_address": f"localhost:{port}",
          "distributed.num_processes": 2, "distributed.process_id": pid}),
      env=_env(devices=1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True) for pid in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), errors[0][-2000:] + errors[1][-2000:]
  a, b = _read_jsonl(single / "metrics.jsonl"), _read_jsonl(multi / "metrics.jsonl")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  for s in a:
    np.testing.assert_allclose(b[s]["loss"], a[s]["loss"], rtol=1e-5)
  assert (multi / "checkpoints" / "3").is_dir()
