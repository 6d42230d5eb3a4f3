"""`sfmnet-benchmark twin`: the release and the port trained side by side, step for step.

  sfmnet-benchmark twin --release_dir=PATH/TO/SFMNet --train_dir=DIR --test_dir=DIR \
      --steps=300 --width=16 --scale=8 [--stage=psnr|gan] [--seed=0] [--seeds=K] \
      [--eval_every=50] [--release_python=python] --output=OUT

The release side is `twin_release.py` in another Python (`--release_python`,
with torch), running the authors' own model and losses; the port side is this
package's train step (`training.steps`, as `train.py` runs it). Per pair:
  1. the release builds its networks (torch.manual_seed(seed)) and hands their
     initial weights over; the port starts from those weights, converted;
  2. one batch sequence comes from the port's tf.data pipeline (order seeded by
     `seed`) and both sides get the same arrays, with the same Adam (lr, betas
     (0.9, 0.99), eps 1e-8);
  3. every loss term of both sides is kept per step, both sides' outputs on
     the test folder are scored by the project's protocol (PSNR/SSIM on Y,
     8-pixel crop) every `eval_every` steps and at the end.
Where the two codes differ the twin takes the release's behaviour and says so
in its output (`release_behaviour`): its detaches in the GAN stage, its
PyTorch initialisation. The GAN stage starts G from `--init_from` (a release
.pth/.npz) and perceives through `--vgg` (torchvision VGG19 weights) on both
sides, or one fixed random VGG19 written to OUT and loaded by both.

Report (OUT/twin.json, and twin_seeds.json with --seeds): per step the terms
and totals of both sides; `first_divergence_step` (the first step whose totals
differ by more than 1% relative, null if none); `median_rel_loss_diff`;
`release`/`port`: final psnr, ssim and their gains over bicubic, seconds per
step; the PSNR-vs-step curves; PNGs of the loss curves (log scale) and of test
PSNR. With --seeds=K, K pairs (seed, seed+1, ...: each pair's two sides share
their init and batch order, pairs differ) and the mean, standard deviation
and Welch's t-test of the gains, release vs port. Finished pairs are kept in
OUT/pairs/seed<S>.json and reused by the same command run again (it resumes)."""

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

DIVERGENCE = 0.01
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twin_release.py")
RELEASE_BEHAVIOUR = {
    "init": "the release's PyTorch initialisation (torch.manual_seed(seed)), converted",
    "gan_detaches": "perceptual features and D_fre's fake logits detached, as main_GAN.py",
    "loss_sum_order": "main_two.py's: l1_out + w amplitude + w phase + l1_fre",
}


class ReleaseError(RuntimeError):
  """The release side failed or is missing (the message says what to install or pass)."""


def compare_curves(release: Sequence[float], port: Sequence[float],
                   tolerance: float = DIVERGENCE) -> Dict[str, Optional[float]]:
  """`first_divergence_step` (first step whose totals differ by more than `tolerance`
  relative to the release's, or None) and `median_rel_loss_diff` over all steps."""
  r, p = np.asarray(release, np.float64), np.asarray(port, np.float64)
  if r.shape != p.shape or not r.size:
    raise ValueError(f"curves of {r.shape} and {p.shape} steps cannot be compared")
  rel = np.abs(p - r) / np.maximum(np.abs(r), 1e-12)
  over = np.flatnonzero(~(rel <= tolerance))  # NaN counts as diverged
  return {"first_divergence_step": int(over[0]) if over.size else None,
          "median_rel_loss_diff": float(np.median(rel)), "max_rel_loss_diff": float(rel.max())}


def welch(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
  """Welch's two-sample t-test (unequal variances) of means a vs b."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  t, p = stats.ttest_ind(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_var=False)
  return {"t": float(t), "p_value": float(p), "mean_difference": float(np.mean(b) - np.mean(a))}


class ReleaseWorker:
  """`twin_release.py` in a child process: JSON lines over its stdin/stdout, arrays in files."""

  def __init__(self, release_dir: str, python: str = "python", workdir: str = None,
               command: Optional[List[str]] = None):
    if command is None:
      if not os.path.isfile(os.path.join(release_dir or "", "models", "mynet.py")):
        raise ReleaseError(f"no release checkout at {release_dir!r} (models/mynet.py): git "
                           "clone https://github.com/wcy-cs/SFMNet and pass --release_dir")
      command = [python, WORKER, f"--release_dir={release_dir}"]
    self.workdir = workdir or tempfile.mkdtemp(prefix="sfmnet_twin_")
    os.makedirs(self.workdir, exist_ok=True)
    self.count = 0
    try:
      self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)
    except OSError as e:
      raise ReleaseError(f"cannot start the release side ({command[0]}): {e}; give "
                         "--release_python=PATH of a Python with torch and einops") from None

  def path(self, name: str) -> str:
    self.count += 1
    return os.path.join(self.workdir, f"{self.count:06d}_{name}.npz")

  def call(self, cmd: str, **msg) -> dict:
    try:
      self.proc.stdin.write(json.dumps({"cmd": cmd, **msg}) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except BrokenPipeError:
      line = ""
    if not line:
      raise ReleaseError(f"the release side exited ({self.proc.poll()}): see its messages "
                         "above (torch and einops installed for --release_python?)")
    answer = json.loads(line)
    if "error" in answer:
      raise ReleaseError(f"release side: {answer['error']}")
    return answer

  def close(self):
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()


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


def _config(width: int, scale: int, stage: str, batch: int, seed: int, lr: float, vgg: str,
            conv_impl: str):
  from sfmnet_jax.apps import config_files  # pylint: disable=g-import-not-at-top
  config_files.make_importable()
  from configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config()
  cfg.model.num_features, cfg.model.conv_impl = width, conv_impl
  cfg.data.scale, cfg.stage, cfg.batch_size, cfg.seed = scale, stage, batch, seed
  cfg.optimizer.learning_rate = cfg.d_optimizer.learning_rate = lr
  cfg.gan.release_perceptual_detach = cfg.gan.release_dfre_detach = True  # the release's
  cfg.perceptual.weights = vgg
  return cfg


class PortSide:
  """This package's train step (`steps.pmap_train_step`, as `train.py` runs it) from the
  release's initial weights."""

  def __init__(self, cfg, release_weights: Dict[str, np.ndarray]):
    import jax  # pylint: disable=g-import-not-at-top
    from sfmnet_jax import devices  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.model.generator import SFMNet  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.weights import release  # pylint: disable=g-import-not-at-top
    self.jax, self.devices, self.cfg = jax, devices, cfg
    part = lambda name: {k[len(name) + 1:]: v for k, v in release_weights.items()  # noqa: E731
                         if k.startswith(name + "/")}
    plain = SFMNet(num_features=cfg.model.num_features)
    g_params = release.state_dict_to_params(part("generator"), plain)
    model = training.build_model(cfg)
    _, static, self.vgg_params = training.create_state(cfg, model)
    d_params = None
    if cfg.stage == "gan":
      d_params = tuple(release.load_release_discriminator(part(n), kind)[1]["params"]
                       for n, kind in (("d_spa", "spatial"), ("d_fre", "frequency")))
    state = steps.new_state(g_params, static["tx"], seed=cfg.seed, ema=False, d_params=d_params,
                            d_tx=static.get("d_tx"))
    self.state = devices.replicate(state)
    if self.vgg_params is not None:
      self.vgg_params = devices.replicate(self.vgg_params)
    step_fn = steps.gan_step if cfg.stage == "gan" else steps.psnr_step
    self.step_fn = steps.pmap_train_step(step_fn, **static)
    self.model = static["model"]

  def step(self, batch) -> dict:
    t0 = time.perf_counter()
    data = {"hr": batch["hr"], "lr_up": batch["lr_up"]}
    args = (self.state, data) + ((self.vgg_params,) if self.cfg.stage == "gan" else ())
    self.state, metrics = self.step_fn(*args)
    metrics = {k: float(np.asarray(v)[0]) for k, v in self.jax.device_get(metrics).items()}
    seconds = time.perf_counter() - t0
    total = metrics.pop("loss")
    for k in ("grad_norm", "finite"):
      metrics.pop(k, None)
    return {"total": total, "terms": metrics, "seconds": seconds}

  def predict(self, lr_up: np.ndarray) -> np.ndarray:
    from sfmnet_jax.model.generator import jitted_apply  # pylint: disable=g-import-not-at-top
    params = self.devices.unreplicate(self.state.generator["params"])
    apply = jitted_apply(self.model)
    outs = []
    for i in range(0, len(lr_up), 8):
      chunk = lr_up[i:i + 8]
      padded = np.concatenate([chunk, np.zeros((8 - len(chunk),) + chunk.shape[1:], np.float32)])
      outs.append(np.asarray(apply({"params": params}, padded)[0])[:len(chunk)])
    return np.concatenate(outs)


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


def load_data(train_dir: str, test_dir: str, scale: int, tfds_dir: Optional[str] = None,
              test_limit: Optional[int] = None):
  """(train split, test arrays {lr_up, hr}) of face folders in the release layout."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import pipeline as ip  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(dict(source="folder", scale=scale, train_dir=train_dir,
                                        test_dir=test_dir, tfds_data_dir=tfds_dir,
                                        resize_to_square=False, skip_unreadable=False))
  train = sources.get_split(data, "train")
  test = sources.get_split(data, "test")
  parts = {"lr_up": [], "hr": []}
  for batch in ip.eval_dataset(test, scale, ip.Sharding(8), test_limit).as_numpy_iterator():
    keep = batch["mask"].reshape(-1) > 0
    for k in parts:
      parts[k].append(batch[k].reshape(-1, *batch[k].shape[2:])[keep])
  return train, {k: np.concatenate(v) for k, v in parts.items()}


def run_pair(worker: ReleaseWorker, train, test, *, width, scale, stage, steps, batch, seed,
             lr=1e-4, eval_every=0, vgg=None, init_from=None, conv_impl="auto",
             fft_weight=0.01, fftd_weight=0.1, patch_size=None, log=print) -> dict:
  """One twin: both sides from the release's init, fed the same batches (see module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import pipeline as ip  # pylint: disable=g-import-not-at-top
  generator = None
  if init_from:
    from sfmnet_jax.weights.release import read_state_dict  # pylint: disable=g-import-not-at-top
    generator = worker.path("init_from")
    np.savez(generator, **read_state_dict(init_from))
  init = worker.path("init")
  info = worker.call("init", stage=stage, width=width, seed=seed, lr=lr, fft_weight=fft_weight,
                     fftd_weight=fftd_weight, generator=generator, vgg=vgg, out=init)
  with np.load(init) as d:
    weights = {k: d[k] for k in d.files}
  cfg = _config(width, scale, stage, batch, seed, lr, vgg, conv_impl)
  port = PortSide(cfg, weights)
  sharding = ip.Sharding(batch, local_devices=jax.local_device_count())
  data = ip.TrainIterator(train, scale, sharding, seed=seed, patch_size=patch_size)
  test_file = worker.path("test")
  np.savez(test_file, lr_up=test["lr_up"])
  curves = {"release": [], "port": []}
  evals = []

  def evaluate(step):
    out_file = worker.path("eval")
    worker.call("eval", batch=test_file, out=out_file)
    with np.load(out_file) as d:
      release_sr = d["img_out"]
    os.remove(out_file)
    row = {"step": step,
           "release": scores(release_sr, test["hr"], test["lr_up"]),
           "port": scores(port.predict(test["lr_up"]), test["hr"], test["lr_up"])}
    evals.append(row)
    log(f"  step {step}: test PSNR release {row['release']['psnr']:.3f} dB, port "
        f"{row['port']['psnr']:.3f} dB (bicubic {row['release']['bicubic_psnr']:.3f})")

  t_start = time.perf_counter()
  for step in range(steps):
    if eval_every and step and step % eval_every == 0:
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
  summary = compare_curves([c["total"] for c in curves["release"]],
                           [c["total"] for c in curves["port"]])
  timed = lambda side: statistics.median(c["seconds"] for c in curves[side][1:] or curves[side])  # noqa: E731
  final = evals[-1]
  return {**summary, "seed": seed, "steps": steps,
          "release": {**final["release"], "seconds_per_step": timed("release"),
                      "device": info.get("device"), "torch": info.get("torch")},
          "port": {**final["port"], "seconds_per_step": timed("port"),
                   "conv_impl": conv_impl, "device": str(jax.devices()[0].device_kind)},
          "curves": {side: [{"total": c["total"], **c["terms"], "seconds": c["seconds"]}
                            for c in curves[side]] for side in curves},
          "evals": evals}


def _pair_file(output, seed):
  return os.path.join(output, "pairs", f"seed{seed}.json")


def _save_pair(output, seed, key, pair):
  path = _pair_file(output, seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"key": key, "pair": pair}, f)
  os.replace(path + ".tmp", path)


def _load_pair(output, seed, key):
  """The pair of `seed` run earlier into `output` with the same settings, or None."""
  try:
    with open(_pair_file(output, seed)) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  return saved["pair"] if saved.get("key") == json.loads(json.dumps(key)) else None


def run(release_dir, train_dir, test_dir, output, *, steps=300, width=16, scale=8,
        stage="psnr", seed=0, seeds=1, batch=8, eval_every=0, release_python="python",
        vgg=None, init_from=None, conv_impl="auto", test_limit=None, lr=1e-4,
        patch_size=None, worker_command=None, log=print) -> dict:
  """The twin (or `seeds` twins) with their report and pictures in `output`."""
  from sfmnet_jax.benchmarks import twin_report  # pylint: disable=g-import-not-at-top
  os.makedirs(output, exist_ok=True)
  notes = dict(RELEASE_BEHAVIOUR)
  if stage == "gan":
    if patch_size and patch_size != 128:
      raise ValueError("the GAN stage trains on whole 128x128 faces: the release's "
                       "discriminators take no other size (drop --patch_size)")
    if not init_from:
      raise ValueError("the GAN stage starts from a PSNR-stage generator: give --init_from="
                       "a release .pth/.npz (both sides load it)")
    if not vgg:
      vgg = random_vgg19(os.path.join(output, "random_vgg19.npz"))
      notes["perceptual"] = ("no VGG19 file given: one fixed random VGG19 "
                             f"({vgg}) on both sides, not the paper's perceptual network")
    else:
      notes["perceptual"] = f"VGG19 weights from {vgg} on both sides"
  train, test = load_data(train_dir, test_dir, scale, os.path.join(output, "tfds"), test_limit)
  log(f"twin: {stage} stage, width {width}, x{scale}, batch {batch}, {steps} steps, "
      f"{train.num_examples} training and {len(test['hr'])} test faces")
  # What makes two runs of a pair the same run: a finished pair is kept in the output
  # folder and reused when the command is run again (a long seeds study resumes).
  pair_key = {"stage": stage, "width": width, "scale": scale, "batch": batch, "steps": steps,
              "lr": lr, "eval_every": eval_every, "conv_impl": conv_impl,
              "patch_size": patch_size, "init_from": init_from, "vgg": vgg,
              "train": train_dir, "test": test_dir, "test_limit": test_limit}
  worker = ReleaseWorker(release_dir, release_python, os.path.join(output, "exchange"),
                         command=worker_command)
  pairs = []
  try:
    for k in range(seeds):
      t0 = time.perf_counter()
      log(f"pair {k + 1}/{seeds} (seed {seed + k})")
      done = _load_pair(output, seed + k, pair_key)
      if done is not None:
        log(f"  resumed: {_pair_file(output, seed + k)} holds this pair's run")
        pairs.append(done)
        continue
      pairs.append(run_pair(worker, train, test, width=width, scale=scale, stage=stage,
                            steps=steps, batch=batch, seed=seed + k, lr=lr,
                            eval_every=eval_every, vgg=vgg, init_from=init_from,
                            conv_impl=conv_impl, patch_size=patch_size, log=log))
      _save_pair(output, seed + k, pair_key, pairs[-1])
      if k + 1 < seeds:
        log(f"  pair took {(time.perf_counter() - t0) / 60:.1f} min: about "
            f"{(time.perf_counter() - t0) * (seeds - k - 1) / 60:.0f} min left")
  finally:
    worker.close()
    shutil.rmtree(os.path.join(output, "exchange"), ignore_errors=True)
  config = {"stage": stage, "width": width, "scale": scale, "batch": batch, "steps": steps,
            "seed": seed, "seeds": seeds, "lr": lr, "train_dir": train_dir, "test_dir": test_dir,
            "eval_every": eval_every, "conv_impl": conv_impl, "release_dir": release_dir,
            "patch_size": patch_size}
  result = {**pairs[0], "config": config, "release_behaviour": notes}
  if seeds > 1:
    result["seeds_study"] = twin_report.seeds_study(pairs)
  twin_report.write(result, pairs, output, log)
  return result
