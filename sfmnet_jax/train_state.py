"""The model and train state a config describes (no input pipeline: imports no TensorFlow).

`build_model(config)` and `create_state(config, model)` are what `training.py`
trains and what the benchmarks time; a GPU or TPU host without TensorFlow can
import this module.
"""

import logging

import jax.numpy as jnp

from sfmnet_jax import checkpoints, train_steps
from sfmnet_jax.discriminators import FrequencyDiscriminator, SpatialDiscriminator, init_discriminator
from sfmnet_jax.models import SFMNet, init_generator

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config) -> SFMNet:
  return SFMNet(**config.model.to_dict(), dtype=DTYPES[config.dtype])


def _initial_generator(config, model):
  """(model, params): fresh weights, or `init_from` with the architecture it records."""
  if not config.init_from:
    return model, init_generator(model, config.seed)["params"]
  loaded, variables, info = checkpoints.load_generator(
      config.init_from, use_ema=config.init_from_ema, scale=config.data.scale,
      configured=checkpoints.model_meta(model))
  logging.info("Generator initialised from %s (step %s, ema=%s)", config.init_from,
               info["step"], info["ema"])
  return (loaded.clone(dtype=model.dtype, remat=model.remat, conv_algorithm=model.conv_algorithm),
          variables["params"])


def create_state(config, model):
  """The initial TrainState, the static pieces the steps need (with the model), VGG params."""
  tx = train_steps.adam(config.optimizer)
  model, g_params = _initial_generator(config, model)
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
