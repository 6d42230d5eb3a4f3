"""Training steps in process: pmap equivalence, the GAN step, NaN skips, the release's quirks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import demo
from sfmnet_jax.devices import AXIS
from sfmnet_jax.training import losses, state as training, steps as train_steps
from sfmnet_jax.training import loop


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
  return helpers.override(cfg, overrides)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _batch(seed, n_dev, per_dev, size=32):
  rng = np.random.default_rng(seed)
  hr = rng.uniform(size=(n_dev * per_dev, size, size, 3)).astype(np.float32)
  lr_up = np.clip(hr + rng.normal(0, 0.05, hr.shape), 0, 1).astype(np.float32)
  shape = (n_dev, per_dev, size, size, 3)
  return {"hr": hr.reshape(shape), "lr_up": lr_up.reshape(shape)}


def _run_psnr_steps(cfg, n_dev, batches):
  """Runs PSNR steps on `n_dev` devices; returns [(state, metrics)] after each batch."""
  model = training.build_model(cfg)
  state, static, _ = training.create_state(cfg, model)
  step = jax.pmap(lambda s, b: train_steps.psnr_step(s, b, **static), axis_name=AXIS,
                  devices=jax.local_devices()[:n_dev])
  out = []
  for b in batches:
    mesh_state = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n_dev), state)
    mesh_state, metrics = step(mesh_state, b)
    state, metrics = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), (mesh_state, metrics))
    out.append((state, metrics))
  return out, static


def test_pmap_on_4_devices_equals_one_device(tfds_dir):
  """What the all-reduce guarantees: 4 devices' pmean-ed gradients and loss equal 1 device's.

  Parameters after an Adam step are not compared: from a zero moment Adam moves each
  parameter by about lr * sign(gradient), so a gradient entry near zero can flip its
  update by 2 lr on rounding alone, on some machines and not others.
  """
  assert jax.local_device_count() >= 4
  cfg = tiny_config(tfds_dir)
  model = training.build_model(cfg)
  state, static, _ = training.create_state(cfg, model)
  kwargs = {k: static[k] for k in ("model", "cfg")}

  def grads_on(n_dev):
    def fn(params, batch):
      (loss, _), grads = train_steps.psnr_loss_and_grads(params, batch, **kwargs)
      return jax.lax.pmean((loss, grads), AXIS)
    return jax.pmap(fn, axis_name=AXIS, devices=jax.local_devices()[:n_dev])

  batch = _batch(0, 4, 2)
  params = state.generator["params"]
  stack = lambda n: jax.tree_util.tree_map(lambda x: np.stack([x] * n), params)  # noqa: E731
  loss4, g4 = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), grads_on(4)(stack(4), batch))
  loss1, g1 = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), grads_on(1)(
      stack(1), {k: v.reshape(1, 8, *v.shape[2:]) for k, v in batch.items()}))
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  scale = max(np.abs(g).max() for g in jax.tree_util.tree_leaves(g1))
  assert scale > 0
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * scale, rtol=0),
                         g4, g1)


def test_non_finite_update_is_skipped_and_counted(tfds_dir):
  cfg = tiny_config(tfds_dir)
  bad = _batch(0, 1, 8)
  bad["lr_up"][0, 0, 3, 3, 0] = np.nan
  results, _ = _run_psnr_steps(cfg, 1, [bad, _batch(1, 1, 8)])
  (s_bad, m_bad), (s_ok, m_ok) = results
  model = training.build_model(cfg)
  initial, _, _ = training.create_state(cfg, model)
  same = jax.tree_util.tree_map(np.array_equal, (s_bad.generator, s_bad.ema_params),
                                (initial.generator, initial.ema_params))
  assert all(jax.tree_util.tree_leaves(same))  # parameters, Adam's moments and count, EMA
  assert int(s_bad.skipped_updates) == 1 and float(m_bad["finite"]) == 0.0
  assert int(s_bad.step) == 1  # the step is counted, only the update is skipped
  leaves_ok = jax.tree_util.tree_leaves(s_ok.generator["params"])
  assert all(np.isfinite(x).all() for x in leaves_ok) and int(s_ok.skipped_updates) == 1
  assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      np.array_equal, s_ok.generator["params"], s_bad.generator["params"])))
  assert int(s_ok.generator["opt_state"][0].count) == 1


def test_gan_step_updates_all_three_networks(tfds_dir):
  cfg = tiny_config(tfds_dir, stage="gan", **{"perceptual.weights": "random"})
  model = training.build_model(cfg)
  state, static, vgg_params = training.create_state(cfg, model)
  step = jax.pmap(lambda s, b, v: train_steps.gan_step(s, b, v, **static),
                  axis_name=AXIS, devices=jax.local_devices()[:1])
  rep = lambda t: jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], t)  # noqa: E731
  new, metrics = step(rep(state), _batch(3, 1, 2), rep(vgg_params))
  new = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), new)
  for net in ("generator", "d_spa", "d_fre"):
    before, after = getattr(state, net)["params"], getattr(new, net)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(after)), net
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, before,
                                                                    after))), net
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


def test_progress_rates_come_from_completed_steps(monkeypatch):
  """Steps/s over the last interval without validation time; the ETA from the mean rate
  since the first step plus the validations to come at their mean duration."""
  now = [100.0]
  monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
  progress = loop.Progress(num_steps=30, eval_steps=[10, 20, 30])
  for step in range(1, 11):  # one step per second
    now[0] += 1.0
    progress.completed(step)
  rate, eta = progress.report()
  assert rate == pytest.approx(1.0) and eta == pytest.approx(20.0)  # no validation timed yet
  now[0] += 10.0  # the validation at step 10 takes 10 s
  progress.evaluated(10.0)
  for step in range(11, 21):  # then steps slow down to 2 s
    now[0] += 2.0
    progress.completed(step)
  rate, eta = progress.report()
  # Steps 10 -> 20: 10 steps in 20 s of training; 1 -> 20: 19 steps in 1 * 9 + 2 * 10 = 29 s.
  # Left: 10 steps at 29 / 19 s each, and the validations at steps 20 and 30, 10 s each.
  assert rate == pytest.approx(0.5) and eta == pytest.approx(10 * 29 / 19 + 20)
  assert progress.report() == (None, None)  # nothing completed since
  assert loop.format_duration(eta) == "0m35s" and loop.format_duration(3725) == "1h02m"


def _torch_adam_reference(p0, grads, lr, b1, b2, eps):
  """torch.optim.Adam's single-tensor CPU algorithm (torch 2.x `_single_tensor_adam`), in
  float32 numpy: exp_avg.lerp_(g, 1 - b1); exp_avg_sq * b2 + (1 - b2) g^2;
  p -= lr / bc1 * exp_avg / (sqrt(exp_avg_sq) / sqrt(bc2) + eps)."""
  p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
  for t, g in enumerate(grads, start=1):
    m = m + np.float32(1 - b1) * (g - m)
    v = v * np.float32(b2) + np.float32(1 - b2) * g * g
    denom = np.sqrt(v) / np.float32(np.sqrt(1 - b2 ** t)) + np.float32(eps)
    p = p - np.float32(lr / (1 - b1 ** t)) * (m / denom)
  return p


def _gradient_sequence(steps=300, n=4000):
  """Gradients of four sizes, a quarter each: 1e-3, 1e-8 (Adam's eps), 1e-9 and exactly 0:
  where Adam's eps placement decides how far a weight moves."""
  rng = np.random.default_rng(0)
  scale = np.array([1e-3, 1e-8, 1e-9, 0.0])[np.arange(n) % 4]
  p0 = (0.1 * rng.standard_normal(n)).astype(np.float32)
  return p0, (rng.standard_normal((steps, n)) * scale).astype(np.float32), np.arange(n) % 4


@pytest.mark.parametrize("flatten", [False, True])
def test_adam_is_torchs_adam_on_tiny_and_zero_gradients(flatten):
  """The port's optimiser (the config's Adam, flattened or not) moves every weight as
  torch.optim.Adam does over 300 steps, weights whose gradients are at or under eps
  included (one step of a weight taken the other way would be 2e-3 off)."""
  cfg = demo.get_config().optimizer
  p0, grads, kind = _gradient_sequence()
  tx = train_steps.adam(cfg, flatten=flatten)
  params = {"w": jnp.asarray(p0)}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, g):
    updates, opt_state = tx.update({"w": g}, opt_state, params)
    return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

  for g in grads:
    params, opt_state = step(params, opt_state, jnp.asarray(g))
  want = _torch_adam_reference(p0, grads, cfg.learning_rate, cfg.b1, cfg.b2, cfg.eps)
  got = np.asarray(params["w"])
  moved = np.abs(want - p0)
  for k in range(3):  # every gradient size moved its weights by a sizeable amount
    assert moved[kind == k].mean() > 1e-3, k
  np.testing.assert_array_equal(got[kind == 3], p0[kind == 3])
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_adam_matches_torch_when_torch_is_here(tmp_path):
  """The same sequence through torch.optim.Adam itself, in a Python with torch
  (SFMNET_RELEASE_PYTHON, as the twin's tests), against the closed form above."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  python = os.environ.get("SFMNET_RELEASE_PYTHON", sys.executable)
  if subprocess.run([python, "-c", "import torch"], capture_output=True).returncode:
    pytest.skip("needs a Python with torch (SFMNET_RELEASE_PYTHON)")
  cfg = demo.get_config().optimizer
  p0, grads, _ = _gradient_sequence()
  np.savez(tmp_path / "in.npz", p0=p0, g=grads)
  script = (
      "import numpy as np, torch, sys\n"
      "d = np.load(sys.argv[1]); p = torch.nn.Parameter(torch.from_numpy(d['p0'].copy()))\n"
      f"opt = torch.optim.Adam([p], lr={cfg.learning_rate}, betas=({cfg.b1}, {cfg.b2}), "
      f"eps={cfg.eps})\n"
      "for g in d['g']:\n"
      "  p.grad = torch.from_numpy(g.copy()); opt.step()\n"
      "np.save(sys.argv[2], p.detach().numpy())\n")
  subprocess.run([python, "-c", script, str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
                 check=True)
  torch_result = np.load(tmp_path / "out.npy")
  want = _torch_adam_reference(p0, grads, cfg.learning_rate, cfg.b1, cfg.b2, cfg.eps)
  np.testing.assert_allclose(torch_result, want, rtol=0, atol=2e-6)
