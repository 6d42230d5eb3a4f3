"""The networks and train state a config describes, and train states from checkpoints.

`build_model(config)` and `create_state(config, model)` are what `loop.py`
trains and what the benchmarks time; they import no input pipeline (no
TensorFlow), so a bare accelerator host can use them. Every network goes
through `sfmnet_jax.cpu.accelerate` with the config's `model.conv_impl`: on
a GPU or TPU (or with "xla") it is the plain Flax module. Initial parameters
come from each network's own `init_variables` (an accelerated module draws
them on the host; the plain module draws the same values on every host).
"""

import dataclasses
import logging

import jax
import numpy as np

from sfmnet_jax.cpu import accelerate
from sfmnet_jax.model.discriminators import FrequencyDiscriminator, SpatialDiscriminator
from sfmnet_jax.model.generator import DTYPES, SFMNet, init_variables
from sfmnet_jax.training import steps
from sfmnet_jax.weights import checkpoints

ARCHITECTURE = ("num_features", "num_resblocks", "num_heads", "share_fusion_attention", "remat")


def _accelerate(config, module, platform=None):
  return accelerate(module, config.model.get("conv_impl", "auto"),
                    config.model.get("conv_algorithm", "auto"), platform,
                    config.model.get("cpu_trig", "poly"))


def spectral_transform(config, platform=None) -> str:
  """`model.spectral_transform`: "fft" or "dft" as given, and "auto": "dft" for programs that
  run on a TPU, which has no FFT unit (its compiler makes an FFT matrix products in a
  channels-first layout, a transpose of every feature map each way), "fft" elsewhere."""
  name = config.model.get("spectral_transform", "auto")
  if name != "auto":
    return name
  return "dft" if (platform or jax.default_backend()) == "tpu" else "fft"


def build_model(config, platform=None) -> SFMNet:
  """The config's generator, as it runs on `platform` (default: JAX's default backend)."""
  fields = {k: config.model[k] for k in ARCHITECTURE if k in config.model}
  model = SFMNet(**fields, dtype=DTYPES[config.dtype],
                 spectral_transform=spectral_transform(config, platform))
  return _accelerate(config, model, platform)


def _initial_generator(config, model, platform):
  """(model, params): fresh weights, or `init_from` with the architecture it records."""
  if not config.init_from:
    return model, init_variables(model, config.seed)["params"]
  loaded, variables, info = checkpoints.load_generator(
      config.init_from, use_ema=config.init_from_ema, scale=config.data.scale,
      configured=checkpoints.model_meta(model), conv_impl="xla")
  logging.info("Generator initialised from %s (step %s, ema=%s)", config.init_from,
               info["step"], info["ema"])
  loaded = loaded.clone(dtype=DTYPES[config.dtype], remat=config.model.get("remat", False),
                        spectral_transform=spectral_transform(config, platform))
  return _accelerate(config, loaded, platform), variables["params"]


def flatten_optimizer(optimizer_cfg, platform=None) -> bool:
  """`optimizer.flatten`: True, False, or None = on the CPU backend (where many small
  per-tensor ops cost more than one concatenation)."""
  flatten = optimizer_cfg.get("flatten", None)
  if flatten is None:
    return (platform or jax.default_backend()) == "cpu"
  if not isinstance(flatten, bool):
    raise ValueError(f"optimizer.flatten must be True, False or None, got {flatten!r}")
  return flatten


def create_state(config, model, platform=None):
  """The initial TrainState, the static pieces the steps need (with the model), VGG params."""
  tx = steps.adam(config.optimizer, flatten_optimizer(config.optimizer, platform))
  model, g_params = _initial_generator(config, model, platform)
  static = {"model": model, "tx": tx, "cfg": config}
  ema = config.ema_decay > 0
  if config.stage == "psnr":
    return steps.new_state(g_params, tx, seed=config.seed, ema=ema), static, None
  if config.stage != "gan":
    raise ValueError(f"stage must be 'psnr' or 'gan', got {config.stage!r}")
  from sfmnet_jax.weights import vgg  # pylint: disable=g-import-not-at-top
  vgg_model, vgg_params = vgg.load_perceptual_network(config.perceptual)
  d_tx = steps.adam(config.d_optimizer, flatten_optimizer(config.d_optimizer, platform))
  d_spa = _accelerate(config, SpatialDiscriminator(), platform)
  d_fre = _accelerate(config, FrequencyDiscriminator(), platform)
  size = (config.data.patch_size or 128,) * 2  # the discriminators see training crops
  d_params = (init_variables(d_spa, config.seed + 1, size)["params"],
              init_variables(d_fre, config.seed + 2, size)["params"])
  state = steps.new_state(g_params, tx, seed=config.seed, ema=ema, d_params=d_params, d_tx=d_tx)
  static.update(d_spa_model=d_spa, d_fre_model=d_fre,
                vgg_model=_accelerate(config, vgg_model, platform), d_tx=d_tx)
  return state, static, vgg_params


def _restructure(template, raw):
  """`raw` (a state as Orbax restores it without a target: dicts, lists, arrays) in the
  structure of `template`. Optimiser moments move between their two layouts: where the
  template has a tree of arrays and `raw` one vector (`optimizer.flatten`, or checkpoints
  written before the parameters became pytrees), the vector is unravelled in the tree's
  leaf order; where the template has one vector and `raw` a tree, the tree's leaves are
  concatenated in that order."""
  leaves, treedef = jax.tree_util.tree_flatten(template)
  if not leaves:
    return template
  if treedef.num_nodes == 1 and np.ndim(template) == 1 and isinstance(raw, dict):
    parts = [np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(raw)]
    if sum(p.size for p in parts) != np.size(template):
      raise ValueError(f"a checkpoint tree of {sum(p.size for p in parts)} values does not "
                       f"fit a vector of {np.size(template)}")
    return np.concatenate(parts).astype(np.asarray(template).dtype)
  if isinstance(raw, np.ndarray) or hasattr(raw, "shape"):
    raw = np.asarray(raw)
    if treedef.num_nodes == 1:  # a leaf
      return raw.reshape(np.shape(template))
    sizes = [int(np.size(x)) for x in leaves]
    if raw.ndim != 1 or raw.size != sum(sizes):
      raise ValueError(f"a checkpoint array of shape {raw.shape} does not fit {treedef}")
    parts = np.split(raw, np.cumsum(sizes)[:-1])
    return jax.tree_util.tree_unflatten(
        treedef, [p.reshape(np.shape(x)) for p, x in zip(parts, leaves)])
  if dataclasses.is_dataclass(template):
    return template.replace(**{f.name: _restructure(getattr(template, f.name), raw[f.name])
                               for f in dataclasses.fields(template)})
  if isinstance(template, dict):
    return {k: _restructure(v, raw[k]) for k, v in template.items()}
  if hasattr(template, "_fields"):  # a NamedTuple (optax states)
    return type(template)(*[_restructure(getattr(template, f), raw[f]) for f in template._fields])
  if isinstance(template, (tuple, list)):
    items = [raw[str(i)] if isinstance(raw, dict) else raw[i] for i in range(len(template))]
    return type(template)(_restructure(t, r) for t, r in zip(template, items))
  raise TypeError(f"cannot restore {type(template).__name__} from {type(raw).__name__}")


def restore_state(mngr, template: steps.TrainState, step=None):
  """(TrainState, meta) of a checkpoint, in the structure of `template`: checkpoints of
  this code and of the code before the parameters became pytrees."""
  raw, meta = checkpoints.restore(mngr, step)
  return _restructure(jax.device_get(template), raw), meta
