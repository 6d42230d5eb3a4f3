"""The release and the port trained side by side, step for step (`sfmnet-benchmark twin`).

Both sides train what a training config describes (`--config`, as `train.py`
takes it): its width and depth, data, batch, seed, learning rate and Adam,
loss weights, stage (PSNR or GAN) and its `num_train_steps`. The release side
is `release_side/twin_worker.py` in another Python (`worker.py`), running the
authors' own model and losses; the port side is this package's train step
(`training.steps`, as `train.py` runs it). Per pair:
  1. the release builds its networks (torch.manual_seed(seed)) and hands their
     initial weights over; the port starts from those weights, converted;
  2. one batch sequence comes from the port's tf.data pipeline (order seeded by
     the seed) and both sides get the same arrays;
  3. every loss term of both sides is kept per step; at step 0, every
     `eval_every` steps and at the end, both sides' outputs on the test split
     are scored by the project's protocol (PSNR/SSIM on Y, 8-pixel crop) and
     against each other, the two networks' parameters are compared, and (PSNR stage) both
     codes' gradients at the release's current weights on the same faces.
Where the two codes differ the twin takes the release's behaviour and says so
in its output (`release_behaviour`): its detaches in the GAN stage, its
PyTorch initialisation. The GAN stage starts G from `init_from` (a release
.pth/.npz, e.g. a PSNR twin's `release_generator.npz`) and perceives through
`perceptual.weights` (torchvision VGG19) on both sides, or one fixed random
VGG19 written to the output folder and loaded by both.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, Sequence

import numpy as np

from sfmnet_jax.parity import pairs, report, stats
from sfmnet_jax.parity.port_side import PortSide, part, port_initial_generator, release_networks
from sfmnet_jax.parity.worker import ReleaseWorker

RELEASE_BEHAVIOUR = {
    "init": "the release's PyTorch initialisation (torch.manual_seed(seed)), converted",
    "gan_detaches": "perceptual features and D_fre's fake logits detached, as main_GAN.py",
    "loss_sum_order": "main_two.py's: l1_out + w amplitude + w phase + l1_fre",
}
# The side of the faces' centre crops on which both codes' gradients are compared.
PROBE_SIZE = 16
# The release's GAN step (main_GAN.py) has these weights written in.
RELEASE_GAN_WEIGHTS = {"adv_spatial_weight": 0.0005, "perceptual_weight": 0.1}


class ConfigUnsupported(ValueError):
  """A config the release's training scripts cannot train (the message says what)."""


def check_config(config) -> None:
  """ConfigUnsupported for what the release's training scripts cannot do."""
  problems = []
  if config.get("num_train_steps", -1) <= 0:
    problems.append("num_train_steps must be > 0 (the twin's length)")
  if config.optimizer.get("lr_decay_steps"):
    problems.append("the release trains at a constant learning rate (lr_decay_steps)")
  if not config.model.share_fusion_attention or config.model.num_heads != 8:
    problems.append("the release shares the fusion attention, with 8 heads")
  if config.ema_decay > 0:
    problems.append("the release keeps no EMA (ema_decay)")
  if config.stage == "gan":
    problems += [f"the release's GAN step uses loss.{k}={v}" for k, v in
                 RELEASE_GAN_WEIGHTS.items() if config.loss[k] != v]
    if config.gan.instance_noise or config.perceptual.network != "vgg19" or \
        config.perceptual.imagenet_norm:
      problems.append("the release's GAN step has no instance noise and feeds VGG19 [0, 1] "
                      "images")
    if any(config.d_optimizer[k] != config.optimizer[k]
           for k in ("learning_rate", "b1", "b2", "eps")):
      problems.append("the release's three optimisers share one Adam setting (d_optimizer)")
    if not config.init_from:
      problems.append("the GAN stage starts from a PSNR-stage generator: set init_from (a "
                      "release .pth/.npz; both sides load it)")
    if (config.data.patch_size or 128) != 128:
      problems.append("the release's discriminators take whole 128x128 faces (patch_size)")
  if problems:
    raise ConfigUnsupported("the twin cannot run this config: " + "; ".join(problems))


def random_vgg19(path: str, seed: int = 1234) -> str:
  """One fixed random VGG19 in torchvision's `features.*` layout, initialised as torchvision
  initialises a new VGG (Kaiming normal, fan-out, zero biases), so that its deep features
  keep their scale (PyTorch's default bounds shrink them to ~0 by layer 34)."""
  rng = np.random.default_rng(seed)
  weights, c, index = {}, 3, 0
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
            512, 512, 512, 512):
    if v == "M":
      index += 1
      continue
    std = np.sqrt(2.0 / (v * 9))
    weights[f"features.{index}.weight"] = (std * rng.standard_normal((v, c, 3, 3))).astype(
        np.float32)
    weights[f"features.{index}.bias"] = np.zeros((v,), np.float32)
    c, index = v, index + 2
  np.savez(path, **weights)
  return path


def scores(sr: np.ndarray, hr: np.ndarray, lr_up: np.ndarray) -> Dict[str, float]:
  """Mean PSNR / SSIM (Y, the release's protocol) of `sr` and their gains over bicubic."""
  from sfmnet_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  model, bicubic = metrics.y_metrics(sr, hr), metrics.y_metrics(lr_up, hr)
  out = {"psnr": float(np.mean(model["psnr"])), "ssim": float(np.mean(model["ssim"])),
         "bicubic_psnr": float(np.mean(bicubic["psnr"])),
         "bicubic_ssim": float(np.mean(bicubic["ssim"]))}
  out["psnr_gain"] = out["psnr"] - out["bicubic_psnr"]
  out["ssim_gain"] = out["ssim"] - out["bicubic_ssim"]
  return out


def load_data(cfg):
  """(train split, test arrays {lr_up, hr}) of the config's data, prepared where train.py
  prepares it (the first `eval_limit` test faces when it is > 0)."""
  from sfmnet_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  data = cfg.data
  train, test = sources.get_split(data, "train"), sources.get_split(data, "test")
  limit = cfg.eval_limit if cfg.eval_limit > 0 else None
  parts = {"lr_up": [], "hr": []}
  batches = pipeline.eval_dataset(test, data.scale, pipeline.Sharding(8), limit)
  for batch in batches.as_numpy_iterator():
    keep = batch["mask"].reshape(-1) > 0
    for k in parts:
      parts[k].append(batch[k].reshape(-1, *batch[k].shape[2:])[keep])
  return train, {k: np.concatenate(v) for k, v in parts.items()}


def run_pair(worker: ReleaseWorker, cfg, train, test, log=print, keep_dir=None,
             init="release") -> dict:
  """One twin of `cfg` (its seed): both sides from the release's init (`init="port"`: from
  the port's, which both load), fed the same batches (see the module doc). With
  `keep_dir`, both sides' final generators are written there as release state_dicts
  (`release_generator.npz`, `port_generator.npz`: what `init_from` takes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights.release import read_state_dict  # pylint: disable=g-import-not-at-top
  generator = None
  if cfg.init_from:
    generator = worker.path("init_from")
    np.savez(generator, **read_state_dict(cfg.init_from))
  elif init == "port":
    generator = worker.path("init_from")
    np.savez(generator, **port_initial_generator(cfg))
  init = worker.path("init")
  info = worker.call(
      "init", stage=cfg.stage, width=cfg.model.num_features,
      num_resblocks=cfg.model.num_resblocks, seed=cfg.seed, lr=cfg.optimizer.learning_rate,
      betas=[cfg.optimizer.b1, cfg.optimizer.b2], eps=cfg.optimizer.eps,
      fft_weight=cfg.loss.freq_weight, fftd_weight=cfg.loss.adv_frequency_weight,
      generator=generator, vgg=cfg.perceptual.weights, out=init, config=cfg.to_dict())
  with np.load(init) as d:
    initial = release_networks({k: d[k] for k in d.files}, cfg)
  port = PortSide(cfg, initial)
  sharding = pipeline.Sharding(cfg.batch_size, local_devices=jax.local_device_count())
  data = pipeline.TrainIterator(train, cfg.data.scale, sharding, seed=cfg.seed,
                                patch_size=cfg.data.patch_size)
  test_file = worker.path("test")
  np.savez(test_file, lr_up=test["lr_up"])
  curves = {"release": [], "port": []}
  evals = []

  def release_weights():
    out_file = worker.path("weights")
    worker.call("weights", out=out_file)
    with np.load(out_file) as d:
      weights = {k: d[k] for k in d.files}
    os.remove(out_file)
    return weights

  # Both sides' gradients at the release's current weights on the centres of the first test
  # faces, small: at 32 px and more some spectrum bins sit near their 2 pi phase jump, where
  # any two numerical paths (the release's own under 1e-6 of noise) disagree.
  lo = (test["hr"].shape[1] - PROBE_SIZE) // 2
  probe = {k: test[k][:cfg.batch_size, lo:lo + PROBE_SIZE, lo:lo + PROBE_SIZE]
           for k in ("lr_up", "hr")}
  probe_noise = np.float32(1e-6) * np.random.default_rng(0).standard_normal(
      probe["lr_up"].shape).astype(np.float32)
  probe_file = worker.path("probe")
  np.savez(probe_file, **probe)

  def gradient_probe(release_generator):
    out_file = worker.path("gradients")
    worker.call("gradients", batch=probe_file, out=out_file)
    with np.load(out_file) as d:
      release_grads = part({k: d[k] for k in d.files}, "generator")
    os.remove(out_file)
    port_grads = port.gradients_at(release_generator, probe)
    # The floor under which a difference means nothing: the port against itself when the
    # faces move by 1e-6 (a spectrum bin near its phase jump moves far more than that).
    noisy = {**probe, "lr_up": probe["lr_up"] + probe_noise}
    floor = stats.gradient_agreement(port_grads, port.gradients_at(release_generator, noisy))
    return {**stats.gradient_agreement(release_grads, port_grads),
            "noise_floor": {k: floor[k] for k in ("median_rel_diff", "worst_rel_diff", "cosine")}}

  def evaluate(step):
    out_file = worker.path("eval")
    worker.call("eval", batch=test_file, out=out_file)
    with np.load(out_file) as d:
      release_sr = d["img_out"]
    os.remove(out_file)
    port_sr = port.predict(test["lr_up"])
    weights = release_weights()
    release_nets, port_nets = release_networks(weights, cfg), port.networks()
    row = {"step": step,
           "release": scores(release_sr, test["hr"], test["lr_up"]),
           "port": scores(port_sr, test["hr"], test["lr_up"]),
           "outputs": stats.output_agreement(np.clip(release_sr, 0, 1), np.clip(port_sr, 0, 1)),
           "parameters": {n: stats.parameter_distance(release_nets[n], port_nets[n], initial[n])
                          for n in release_nets}}
    if cfg.stage == "psnr":
      row["gradients"] = gradient_probe(release_nets["generator"])
    evals.append(row)
    g = row["parameters"]["generator"]
    log(f"  step {step}: test PSNR release {row['release']['psnr']:.3f} dB, port "
        f"{row['port']['psnr']:.3f} dB (bicubic {row['release']['bicubic_psnr']:.3f}); outputs "
        f"{row['outputs']['psnr_between']:.1f} dB apart; parameter distance "
        f"{g['global'] if g['global'] is not None else float('nan'):.4f}"
        + (f"; gradients at the release's weights: median {row['gradients']['median_rel_diff']:.1e}"
           f" (noise floor {row['gradients']['noise_floor']['median_rel_diff']:.1e}), worst "
           f"{row['gradients']['worst_rel_diff']:.1e} ({row['gradients']['worst_tensor']})"
           if "gradients" in row else ""))

  steps, eval_every = cfg.num_train_steps, cfg.eval_every
  t_start = time.perf_counter()
  for step in range(steps):
    if step == 0 or (eval_every > 0 and step % eval_every == 0):
      evaluate(step)
    b = next(data)
    batch_file = worker.path("batch")
    np.savez(batch_file, lr_up=b["lr_up"].reshape(-1, *b["lr_up"].shape[2:]),
             hr=b["hr"].reshape(-1, *b["hr"].shape[2:]))
    curves["release"].append(worker.call("step", batch=batch_file))
    curves["port"].append(port.step(b))
    os.remove(batch_file)
    if step % 10 == 0 or step == steps - 1:
      r, p = curves["release"][-1]["total"], curves["port"][-1]["total"]
      spent = time.perf_counter() - t_start
      log(f"  step {step + 1}/{steps}: loss release {r:.5f}, port {p:.5f} "
          f"({abs(p - r) / abs(r):.2%}); {spent / (step + 1) * (steps - step - 1) / 60:.1f} "
          "min left in this pair")
  evaluate(steps)
  if keep_dir:
    from sfmnet_jax.weights.release import params_to_state_dict, release_loadable  # pylint: disable=g-import-not-at-top
    os.makedirs(keep_dir, exist_ok=True)
    np.savez(os.path.join(keep_dir, "release_generator.npz"),
             **part(release_weights(), "generator"))
    port_params = port.jax.device_get(port.devices.unreplicate(port.state.generator["params"]))
    np.savez(os.path.join(keep_dir, "port_generator.npz"),
             **release_loadable(params_to_state_dict(port_params)))
  summary = stats.compare_curves([c["total"] for c in curves["release"]],
                                 [c["total"] for c in curves["port"]])
  terms = stats.term_divergence([c["terms"] for c in curves["release"]],
                                [c["terms"] for c in curves["port"]])
  timed = lambda side: statistics.median(c["seconds"] for c in curves[side][1:] or curves[side])  # noqa: E731
  final_eval = evals[-1]
  mean_gain = (final_eval["release"]["psnr_gain"] + final_eval["port"]["psnr_gain"]) / 2
  difference = final_eval["port"]["psnr"] - final_eval["release"]["psnr"]
  return {**summary, "seed": cfg.seed, "steps": steps, "terms": terms,
          "psnr_difference": difference,
          "abs_psnr_diff_over_gain": abs(difference) / abs(mean_gain) if mean_gain else None,
          "nonfinite_steps": {
              "release": sum(not c.get("finite", True) for c in curves["release"]),
              "port_skipped": sum(not c["finite"] for c in curves["port"])},
          "release": {**final_eval["release"], "seconds_per_step": timed("release"),
                      "device": info.get("device"), "torch": info.get("torch")},
          "port": {**final_eval["port"], "seconds_per_step": timed("port"),
                   "conv_impl": cfg.model.conv_impl, "device": str(jax.devices()[0].device_kind)},
          "curves": {side: [{"total": c["total"], **c["terms"], "seconds": c["seconds"],
                             "finite": c.get("finite", True)} for c in curves[side]]
                     for side in curves},
          "evals": evals}


def port_reference(changes: Sequence[str]) -> dict:
  """The reference side as the port itself with config `changes` ("model.conv_impl=xla",
  ...): the worker command (`port_worker.py`) and the label the report uses."""
  if not changes:
    raise ConfigUnsupported("the port as reference needs at least one FIELD=VALUE")
  return {"kind": "port", "changes": list(changes),
          "label": f"port ({', '.join(changes)})",
          "command": [sys.executable, "-m", "sfmnet_jax.parity.port_worker"]
                     + [f"--set={c}" for c in changes]}


def run(config, release_dir, output, *, seeds=1, margin_db=0.05, release_python="python",
        worker_command=None, reference=None, init="release", log=print) -> dict:
  """The twin of `config` (or `seeds` twins, seeds config.seed, config.seed + 1, ...) with
  its report and pictures in `output`; finished pairs are kept in `output/pairs/` and
  reused by the same command run again. `reference` (from `port_reference`) puts the port
  in another numerical mode where the release would be (its entries keep the name
  "release" in the JSON; `reference` says what ran there; both start from the port's initial
  generator). `init="port"` starts both sides of a PSNR-stage pair from the port's initial
  generator for its seed instead of the release's (PyTorch's draw)."""
  cfg = config.copy_and_resolve_references()
  check_config(cfg)
  if init not in ("release", "port"):
    raise ConfigUnsupported(f"init is release or port, not {init!r}")
  if init == "port" and cfg.init_from:
    raise ConfigUnsupported("init=port and init_from both choose the initial generator")
  if reference is not None:
    if cfg.stage != "psnr":
      raise ConfigUnsupported("the port as reference trains the PSNR stage only")
    worker_command, init = reference["command"], "port"
  cfg.gan.release_perceptual_detach = cfg.gan.release_dfre_detach = True  # the release's
  os.makedirs(output, exist_ok=True)
  notes = dict(RELEASE_BEHAVIOUR)
  if cfg.init_from:
    notes["init"] = f"the generator in {cfg.init_from}, loaded by both sides"
  elif init == "port":
    notes["init"] = ("the port's initial generator for the seed (model.init_variables: "
                     "PyTorch's default distributions, JAX's draw), loaded by both sides")
  if cfg.stage == "gan":
    if not cfg.perceptual.weights or cfg.perceptual.weights == "random":
      cfg.perceptual.weights = random_vgg19(os.path.join(output, "random_vgg19.npz"))
      notes["perceptual"] = ("no VGG19 file given: one fixed random VGG19 "
                             f"({cfg.perceptual.weights}) on both sides, not the paper's "
                             "perceptual network")
    else:
      notes["perceptual"] = f"VGG19 weights from {cfg.perceptual.weights} on both sides"
  train, test = load_data(cfg)
  log(f"twin: {cfg.stage} stage, width {cfg.model.num_features}, x{cfg.data.scale}, batch "
      f"{cfg.batch_size}, {cfg.num_train_steps} steps, {train.num_examples} training and "
      f"{len(test['hr'])} test faces")
  # One exchange folder per run: a second run into the same output (resuming its pairs)
  # must not remove the files of one still running.
  exchange = tempfile.mkdtemp(prefix="exchange_", dir=output)
  worker = ReleaseWorker(release_dir, release_python, exchange,
                         command=worker_command)
  finished = []
  try:
    for k in range(seeds):
      seed_cfg = cfg.copy_and_resolve_references()
      seed_cfg.seed = cfg.seed + k
      # What makes two runs of a pair the same run: the config (with its seed).
      key = seed_cfg.to_dict()
      if reference is not None:
        key["reference"] = reference["changes"]
      if init != "release":
        key["init"] = init
      t0 = time.perf_counter()
      log(f"pair {k + 1}/{seeds} (seed {seed_cfg.seed})")
      done = pairs.load(output, seed_cfg.seed, key)
      if done is not None:
        log(f"  resumed: {pairs.pair_dir(output, seed_cfg.seed)} holds this pair's run")
        finished.append(done)
        continue
      finished.append(run_pair(worker, seed_cfg, train, test, log,
                            keep_dir=pairs.pair_dir(output, seed_cfg.seed), init=init))
      pairs.save(output, seed_cfg.seed, key, finished[-1])
      if k + 1 < seeds:
        log(f"  pair took {(time.perf_counter() - t0) / 60:.1f} min: about "
            f"{(time.perf_counter() - t0) * (seeds - k - 1) / 60:.0f} min left")
  finally:
    worker.close()
    shutil.rmtree(exchange, ignore_errors=True)
  result = {**finished[0], "config": cfg.to_dict(), "release_dir": release_dir,
            "release_behaviour": notes}
  if reference is not None:
    result.update(reference={k: reference[k] for k in ("kind", "changes", "label")},
                  release_dir=None, initialisation=notes.pop("init"))
    result.pop("release_behaviour")
  if seeds > 1:
    result["seeds_study"] = report.seeds_study(finished, margin_db)
  report.write(result, finished, output, log)
  return result
