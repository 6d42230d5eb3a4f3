"""`train_and_evaluate(config, workdir)`: the PSNR and GAN stages, from a laptop CPU to a TPU pod.

The loop feeds pmap-ed steps (`train_steps`) from the resumable tf.data
pipeline, writes clu metrics (TensorBoard + console; process 0 only), a
per-step `metrics.jsonl`, validation PSNR/SSIM and sample grids, and keeps
Orbax checkpoints of the whole train state plus the data position. Started
in a workdir that has a checkpoint, it resumes exactly; SIGTERM (preemption)
writes a checkpoint before exiting.
"""

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers, periodic_actions
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from sfmnet_jax import checkpoints, input_pipeline as ip, train_steps
from sfmnet_jax.datasets import sources
from sfmnet_jax.discriminators import FrequencyDiscriminator, SpatialDiscriminator, init_discriminator
from sfmnet_jax.evaluation import evaluate_split, sample_grid
from sfmnet_jax.models import SFMNet, init_generator
from sfmnet_jax.visualize import save_png

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Preempted(SystemExit):
  """Raised after the checkpoint a SIGTERM asked for is written."""


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


def build_model(config) -> SFMNet:
  return SFMNet(**config.model.to_dict(), dtype=DTYPES[config.dtype])


def _initial_generator(config, model):
  """Fresh weights, or `init_from` (a checkpoint/converted folder or a release file)."""
  if not config.init_from:
    return init_generator(model, config.seed)["params"]
  loaded, variables, info = checkpoints.load_generator(config.init_from,
                                                       use_ema=config.init_from_ema)
  mine, theirs = checkpoints.model_meta(model), checkpoints.model_meta(loaded)
  if mine != theirs:
    raise ValueError(f"init_from {config.init_from} holds {theirs}, the config asks for {mine}")
  if info["scale"] not in (None, config.data.scale):
    raise ValueError(f"init_from {config.init_from} was trained for x{info['scale']}, "
                     f"the config is x{config.data.scale}")
  logging.info("Generator initialised from %s (step %s, ema=%s)", config.init_from,
               info["step"], info["ema"])
  return variables["params"]


def create_state(config, model):
  """The initial TrainState and the static pieces the steps need."""
  tx = train_steps.adam(config.optimizer)
  g_params = _initial_generator(config, model)
  static = {"model": model, "tx": tx, "cfg": config}
  if config.stage == "psnr":
    state, static["layouts"] = train_steps.new_state(g_params, tx, seed=config.seed,
                                                     ema=config.ema_decay > 0)
    return state, static, None
  if config.stage != "gan":
    raise ValueError(f"stage must be 'psnr' or 'gan', got {config.stage!r}")
  from sfmnet_jax import vgg  # pylint: disable=g-import-not-at-top
  vgg_model, vgg_params = vgg.load_perceptual_network(config.perceptual)
  d_tx = train_steps.adam(config.d_optimizer)
  d_spa, d_fre = SpatialDiscriminator(), FrequencyDiscriminator()
  size = (config.data.patch_size or 128,) * 2  # the discriminators see training crops
  d_params = (init_discriminator(d_spa, config.seed + 1, size)["params"],
              init_discriminator(d_fre, config.seed + 2, size)["params"])
  state, static["layouts"] = train_steps.new_state(g_params, tx, seed=config.seed,
                                                   ema=config.ema_decay > 0, d_params=d_params,
                                                   d_tx=d_tx)
  static.update(d_spa_model=d_spa, d_fre_model=d_fre, vgg_model=vgg_model, d_tx=d_tx)
  return state, static, vgg_params


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
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  jsonl = _JsonlLog(os.path.join(workdir, "metrics.jsonl"), is_main)

  scale = config.data.scale
  train_split, test_split = _get_splits(config.data)
  sharding = ip.Sharding(config.batch_size, jax.process_index(), jax.process_count(),
                         jax.local_device_count())
  steps_per_epoch = train_split.num_examples // config.batch_size
  num_steps = config.num_train_steps if config.num_train_steps > 0 \
      else config.num_epochs * steps_per_epoch

  model = build_model(config)
  state, static, vgg_params = create_state(config, model)
  mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"),
                             max_to_keep=config.keep_checkpoints)
  start_step, data_state = 0, None
  if mngr.latest_step() is not None:
    tree, meta = checkpoints.restore(mngr, target=train_steps.to_tree(state, static["layouts"]))
    state = train_steps.from_tree(tree)
    data_state = meta["data"]
    start_step = int(state.step)
    logging.info("Resuming from %s at step %d", mngr.directory, start_step)
  train_iter = ip.TrainIterator(train_split, scale, sharding, seed=config.seed,
                                start_step=start_step, augment_flip=config.data.augment_flip,
                                patch_size=config.data.patch_size)
  if data_state is not None:
    train_iter.check_state(data_state)

  if start_step == 0 and is_main:
    writer.write_hparams({k: v for k, v in flatten_dict(config.to_dict(), sep=".").items()
                          if isinstance(v, (int, float, str, bool))})
  step_fn = train_steps.psnr_step if config.stage == "psnr" else train_steps.gan_step
  p_step = train_steps.pmap_train_step(step_fn, **static)
  p_forward = train_steps.pmap_generator(model)
  p_state = train_steps.replicate(state)
  aux = () if vgg_params is None else (train_steps.replicate(vgg_params),)

  preempted = {"flag": False}
  previous_handler = signal.signal(signal.SIGTERM, lambda *_: preempted.update(flag=True))
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                           every_steps=config.log_every)

  def save(step):
    host_state = train_steps.to_tree(train_steps.unreplicate(p_state), static["layouts"])
    checkpoints.save(mngr, step, host_state,
                     _meta(config, model, train_iter.state(), config.stage))

  def evaluate(step):
    flat = train_steps.unreplicate(
        p_state.ema_params if p_state.ema_params is not None else p_state.generator["params"])
    params = static["layouts"]["generator"].unravel(flat)
    result = evaluate_split(p_forward, train_steps.replicate(params), test_split, scale,
                            ip.Sharding(config.eval_batch_size, jax.process_index(),
                                        jax.process_count(), jax.local_device_count()),
                            limit=config.eval_limit if config.eval_limit > 0 else None)
    writer.write_scalars(step, {f"val/{k}": v for k, v in result["mean"].items()})
    if is_main:
      image = sample_grid(model, params, test_split, scale, config.num_sample_images)
      writer.write_images(step, {"samples": image[None]})
      save_png(image, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
    return result["mean"]

  pending, t_start, last = [], time.time(), None
  try:
    for step in range(start_step, num_steps):
      batch = next(train_iter)
      p_state, metrics = p_step(p_state, batch, *aux)
      pending.append((step + 1, metrics))
      report(step + 1)
      done = step + 1 == num_steps
      if (step + 1) % config.log_every == 0 or done or preempted["flag"]:
        host = [(s, train_steps.unreplicate(m)) for s, m in pending]
        for s, m in host:
          jsonl.write(s, m)
        summary = {k: float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
        summary["learning_rate"] = train_steps.learning_rate(config.optimizer, step + 1)
        summary["skipped_updates"] = int(train_steps.unreplicate(p_state.skipped_updates))
        if summary["finite"] < 1:
          logging.warning("step %d: %d non-finite update(s) skipped so far", step + 1,
                          summary["skipped_updates"])
        writer.write_scalars(step + 1, {f"train/{k}": v for k, v in summary.items()})
        pending = []
      if (step + 1) % config.eval_every == 0 or done:
        last = evaluate(step + 1)
      if (step + 1) % config.checkpoint_every == 0 or done or preempted["flag"]:
        save(step + 1)
      if preempted["flag"]:
        mngr.wait_until_finished()
        logging.warning("SIGTERM: checkpoint written at step %d, exiting", step + 1)
        raise Preempted(0)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
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
