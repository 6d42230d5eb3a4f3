"""`train_and_evaluate(config, workdir)`: the PSNR and GAN stages, from a laptop CPU to a TPU pod.

The loop feeds pmap-ed steps (`train_steps`) from the resumable tf.data
pipeline (batches placed on the devices ahead of time), writes clu metrics
(TensorBoard + console; process 0 only), a per-step `metrics.jsonl`,
validation PSNR/SSIM and sample grids, and keeps Orbax checkpoints of the
whole train state plus the data position. Started in a workdir that has a
checkpoint, it resumes exactly.

At most `config.max_steps_in_flight` steps are dispatched ahead of the last
completed one, so the logged steps/s and ETA are measured on completed steps,
and SIGTERM (preemption) reaches its checkpoint within a few step times. After
that checkpoint the run exits with PREEMPTED_EXIT_CODE, so that schedulers
requeue it. With several processes, all of them stop at the same step (JAX's
preemption sync point), whichever received the signal.
"""

import collections
import json
import logging
import os
import signal
import time

import jax
import numpy as np
from clu import metric_writers
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from sfmnet_jax import devices, runtime
from sfmnet_jax.data import pipeline
from sfmnet_jax.data import sources
from sfmnet_jax.data.visualize import save_png
from sfmnet_jax.evaluation.splits import evaluate_split, sample_grid
from sfmnet_jax.training import steps as train_steps
from sfmnet_jax.training.state import build_model, create_state, restore_state
from sfmnet_jax.weights import checkpoints

# 128 + SIGTERM: the status a shell reports for a process that SIGTERM ended. Schedulers that
# requeue preempted jobs (Slurm --requeue, Kubernetes restartPolicy OnFailure, ...) see a failure.
PREEMPTED_EXIT_CODE = 143


class Preempted(SystemExit):
  """Raised after the checkpoint a SIGTERM asked for is committed (code PREEMPTED_EXIT_CODE)."""


class PreemptionWatch:
  """Whether to stop for a preemption at a step; every process gets the same answer.

  One process: a SIGTERM handler sets a flag. Several processes (jax.distributed):
  JAX's preemption sync manager catches SIGTERM on whichever process gets it and
  agrees with the others on a step to stop at (`reached_preemption_sync_point`,
  what Orbax's `reached_preemption` wraps); no Python handler may replace its own.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self._flag, self._previous = False, None
    if not self.multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, *_):
    self._flag = True

  def reached(self, step: int) -> bool:
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Progress:
  """Steps/s and ETA from the times steps completed (never from dispatches).

  Time spent in validation is left out of the training rate (`evaluated`).
  Steps/s is the rate since the previous report; the ETA is the steps left at
  the mean rate since the first completed step (after compilation), plus the
  validations still to come (`eval_steps`) at the mean duration of those done.
  """

  def __init__(self, num_steps: int, eval_steps=()):
    self.num_steps = num_steps
    self.eval_steps = sorted(eval_steps)
    self._marks = collections.deque()  # (step, time) of completed steps since the last report
    self._first = None
    self._paused = 0.0  # validation seconds so far
    self._evals = []

  def _now(self):
    return time.perf_counter() - self._paused

  def completed(self, step: int) -> None:
    mark = (step, self._now())
    self._marks.append(mark)
    if self._first is None:
      self._first = mark

  def evaluated(self, seconds: float) -> None:
    self._paused += seconds
    self._evals.append(seconds)

  def report(self):
    """(steps/s since the previous report, ETA seconds)."""
    marks = list(self._marks)
    self._marks = collections.deque(marks[-1:])
    if len(marks) < 2 or marks[-1][1] <= marks[0][1]:
      return None, None
    step = marks[-1][0]
    rate = (step - marks[0][0]) / (marks[-1][1] - marks[0][1])
    overall = (step - self._first[0]) / (marks[-1][1] - self._first[1])
    evals_left = sum(s >= step for s in self.eval_steps)  # a step logs, then validates
    per_eval = float(np.mean(self._evals)) if self._evals else 0.0
    return rate, (self.num_steps - step) / overall + evals_left * per_eval


def _validation_steps(start_step: int, num_steps: int, every: int):
  """The steps after which the run validates: every `every` steps and the last (none if <= 0)."""
  if every <= 0 or start_step >= num_steps:
    return frozenset()
  first = (start_step // every + 1) * every
  return frozenset(range(first, num_steps + 1, every)) | {num_steps}


def format_duration(seconds) -> str:
  if seconds is None or not np.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def initialize_distributed(cfg) -> None:
  """jax.distributed for multi-host runs (TPU pods auto-detect; CPU tests use gloo)."""
  if not cfg.enabled:
    return
  # Cross-process collectives of the CPU backend (no effect on TPU/GPU devices). Nothing may
  # touch the backend before initialize(), not even jax.default_backend().
  jax.config.update("jax_cpu_collectives_implementation", cfg.get("cpu_collectives") or "gloo")
  kwargs = {}
  if cfg.get("coordinator_address"):
    kwargs = dict(coordinator_address=cfg.coordinator_address,
                  num_processes=cfg.num_processes, process_id=cfg.process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def _meta(config, model, data_state, stage):
  return {"model": checkpoints.model_meta(model), "scale": config.data.scale, "stage": stage,
          "data": data_state, "config": json.loads(config.to_json_best_effort())}


class _JsonlLog:
  """Per-step scalars in workdir/metrics.jsonl (process 0), for plots and exact-resume checks."""

  def __init__(self, path, enabled):
    self.path, self.enabled = path, enabled

  def write(self, step, scalars):
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")


def train_and_evaluate(config, workdir: str):
  """Trains SFMNet as `config` says, in `workdir` (resuming from its latest checkpoint)."""
  initialize_distributed(config.distributed)
  runtime.quiet_console_logs()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  jsonl = _JsonlLog(os.path.join(workdir, "metrics.jsonl"), is_main)

  scale = config.data.scale
  train_split, test_split = _get_splits(config.data)
  sharding = pipeline.Sharding(config.batch_size, jax.process_index(), jax.process_count(),
                         jax.local_device_count())
  steps_per_epoch = train_split.num_examples // config.batch_size
  num_steps = config.num_train_steps if config.num_train_steps > 0 \
      else config.num_epochs * steps_per_epoch

  state, static, vgg_params = create_state(config, build_model(config))
  model = static["model"]
  mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"),
                             max_to_keep=config.keep_checkpoints)
  start_step, data_state = 0, None
  if mngr.latest_step() is not None:
    state, meta = restore_state(mngr, state)
    data_state = meta["data"]
    start_step = int(state.step)
    logging.info("Resuming from %s at step %d", mngr.directory, start_step)
  train_iter = pipeline.TrainIterator(train_split, scale, sharding, seed=config.seed,
                                start_step=start_step, augment_flip=config.data.augment_flip,
                                patch_size=config.data.patch_size)
  if data_state is not None:
    train_iter.check_state(data_state)
  batches = devices.prefetch_to_devices(train_iter, config.prefetch_batches)

  if start_step == 0 and is_main:
    writer.write_hparams({k: v for k, v in flatten_dict(config.to_dict(), sep=".").items()
                          if isinstance(v, (int, float, str, bool))})
  step_fn = train_steps.psnr_step if config.stage == "psnr" else train_steps.gan_step
  p_step = train_steps.pmap_train_step(step_fn, **static)
  p_forward = devices.pmap_generator(model)
  p_state = devices.replicate(state)
  aux = () if vgg_params is None else (devices.replicate(vgg_params),)
  schedule = train_steps.learning_rate_schedule(config.optimizer)
  preemption = PreemptionWatch()
  eval_steps = _validation_steps(start_step, num_steps, config.eval_every)
  progress = Progress(num_steps, eval_steps)

  def save(step):
    host_state = devices.unreplicate(p_state)
    checkpoints.save(mngr, step, host_state,
                     _meta(config, model, train_iter.state(step), config.stage))

  def evaluate(step, warm_up=False):
    """Validation at `step`; `warm_up` compiles its programs on one image, writing nothing."""
    t0 = time.perf_counter()
    params = devices.unreplicate(
        p_state.ema_params if p_state.ema_params is not None else p_state.generator["params"])
    limit = 1 if warm_up else (config.eval_limit if config.eval_limit > 0 else None)
    result = evaluate_split(p_forward, devices.replicate(params), test_split, scale,
                            pipeline.Sharding(config.eval_batch_size, jax.process_index(),
                                        jax.process_count(), jax.local_device_count()),
                            limit=limit)
    if is_main:
      image = sample_grid(model, params, test_split, scale, config.num_sample_images)
    if warm_up:
      return None
    writer.write_scalars(step, {f"val/{k}": v for k, v in result["mean"].items()})
    if is_main:
      writer.write_images(step, {"samples": image[None]})
      save_png(image, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
    progress.evaluated(time.perf_counter() - t0)
    return result["mean"]

  in_flight, finished = collections.deque(), []

  def complete_oldest():
    step, metrics = in_flight.popleft()
    host = devices.unreplicate(metrics)  # waits for that step's device work
    progress.completed(step)
    jsonl.write(step, host)
    finished.append(host)

  def log_summary(step):
    summary = {k: float(np.mean([m[k] for m in finished])) for k in finished[-1]}
    finished.clear()
    summary["learning_rate"] = float(schedule(step))
    summary["skipped_updates"] = int(devices.unreplicate(p_state.skipped_updates))
    rate, eta = progress.report()
    if rate is not None:
      summary.update(steps_per_sec=rate, eta_seconds=eta)
    if summary["finite"] < 1:
      logging.warning("step %d: %d non-finite update(s) skipped so far", step,
                      summary["skipped_updates"])
    writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
    if is_main:
      speed = "" if rate is None else f", {rate:.3g} steps/s, ETA {format_duration(eta)}"
      logging.info("step %d/%d: loss %.5f%s", step, num_steps, summary["loss"], speed)

  if eval_steps:  # compile validation now, so that its time during training is predictable
    evaluate(start_step, warm_up=True)
  t_start, last = time.time(), None
  try:
    for step in range(start_step, num_steps):
      p_state, metrics = p_step(p_state, next(batches), *aux)
      in_flight.append((step + 1, metrics))
      while len(in_flight) > config.max_steps_in_flight:
        complete_oldest()
      done = step + 1 == num_steps
      stop = preemption.reached(step + 1)
      if (step + 1) % config.log_every == 0 or done or stop:
        while in_flight:
          complete_oldest()
        log_summary(step + 1)
      if step + 1 in eval_steps:
        last = evaluate(step + 1)
      if (step + 1) % config.checkpoint_every == 0 or done or stop:
        save(step + 1)
      if stop:
        mngr.wait_until_finished()
        logging.warning("SIGTERM: checkpoint written at step %d, exiting with code %d",
                        step + 1, PREEMPTED_EXIT_CODE)
        raise Preempted(PREEMPTED_EXIT_CODE)
  finally:
    preemption.close()
    mngr.wait_until_finished()
    writer.flush()
  logging.info("Finished %d steps in %.0f s", num_steps - start_step, time.time() - t_start)
  return last


def _get_splits(data_config):
  """Train and test splits; with several processes, process 0 prepares them first."""
  splits = None
  if jax.process_index() == 0:
    splits = sources.get_split(data_config, "train"), sources.get_split(data_config, "test")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("sfmnet: data prepared")
  if splits is None:
    splits = sources.get_split(data_config, "train"), sources.get_split(data_config, "test")
  return splits
