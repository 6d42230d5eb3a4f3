"""Orbax checkpoints: one layout for training runs and converted release weights.

A checkpoint directory is an Orbax `CheckpointManager` directory; each step
folder holds two items:
  - `state`: a pytree of arrays. Training writes the whole train state
    (generator, discriminators, optimisers, EMA, step, RNG); `convert` writes
    only `{"generator": {"params": ...}}`.
  - `meta`: JSON: the generator's architecture (`model`), the scale, where the
    weights came from, and (training) the data iterator position.

`load_generator` reads any of: such a directory (latest step), one step
folder of it, or a release `.pth`/`.npz` file, and returns the generator as it
runs best here (`sfmnet_jax.cpu.accelerate`, by `conv_impl`).
"""

import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from sfmnet_jax.cpu import accelerate
from sfmnet_jax.model.generator import SFMNet, compute_dtype
from sfmnet_jax.weights.release import load_release_weights

ITEMS = ("state", "meta")
_ARCH_FIELDS = ("num_features", "num_resblocks", "num_heads", "share_fusion_attention")


def model_meta(model: SFMNet) -> Dict[str, Any]:
  """The generator's architecture as JSON-able values."""
  return {f: getattr(model, f) for f in _ARCH_FIELDS}


def model_from_meta(meta: Dict[str, Any], **overrides) -> SFMNet:
  kwargs = {f: meta[f] for f in _ARCH_FIELDS if f in meta}
  kwargs.update(overrides)
  return SFMNet(**kwargs)


def manager(directory: str, *, max_to_keep: Optional[int] = None,
            create: bool = True, async_save: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (made absolute, as Orbax wants)."""
  directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: Dict[str, Any]) -> None:
  """Saves host copies of `state` (unreplicate before) and `meta` at `step`."""
  state = jax.device_get(state)
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def restore(mngr: ocp.CheckpointManager, step: Optional[int] = None, target=None):
  """Restores `(state, meta)` at `step` (default: latest). `target` gives the state's structure."""
  if step is None:
    step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  if target is None:
    state_args = ocp.args.StandardRestore()
  else:
    state_args = ocp.args.StandardRestore(jax.tree_util.tree_map(
        ocp.utils.to_shape_dtype_struct, jax.device_get(target)))
  out = mngr.restore(step, args=ocp.args.Composite(
      state=state_args, meta=ocp.args.JsonRestore()))
  return out["state"], out["meta"]


def _as_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


ACCEPTED = ("a training workdir, its checkpoints/ folder, one of its step folders, a folder "
            "written by `sfmnet-convert`, or a release .pth/.npz file")


def _is_step_dir(path: str) -> bool:
  return (os.path.basename(path.rstrip(os.sep)).isdigit()
          and any(os.path.isdir(os.path.join(path, item)) for item in ITEMS))


def _has_steps(path: str) -> bool:
  return any(_is_step_dir(os.path.join(path, name)) for name in os.listdir(path))


def locate(path) -> Tuple[str, Optional[str], Optional[int]]:
  """Where a checkpoint a user names lives: ("file", path, None) or ("orbax", directory, step).

  Accepts everything in ACCEPTED; `step` is None for "the latest".
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path} (give {ACCEPTED})")
  if os.path.isfile(path):
    return "file", path, None
  if _is_step_dir(path):
    return "orbax", os.path.dirname(path.rstrip(os.sep)), int(os.path.basename(path.rstrip(os.sep)))
  if _has_steps(path):
    return "orbax", path, None
  nested = os.path.join(path, "checkpoints")
  if os.path.isdir(nested) and _has_steps(nested):
    return "orbax", nested, None
  raise FileNotFoundError(f"{path}: no checkpoint in this folder (give {ACCEPTED})")


def load_generator(path, *, use_ema: bool = True, dtype=None, scale: Optional[int] = None,
                   scale_flag: str = "--config.data.scale",
                   configured: Optional[Dict[str, Any]] = None, conv_impl: str = "auto",
                   conv_algorithm: str = "auto", cpu_trig: str = "poly"):
  """Loads a generator from anything `locate` accepts, with the architecture it records.

  The generator's width and depth come from the checkpoint (its metadata, or a
  release file's shapes); where they differ from `configured` (a config's
  `model` fields) a warning says the checkpoint's are used. `scale` is the
  data's scale: a checkpoint recorded for another scale is an error naming
  `scale_flag`, the flag that fixes it.
  `dtype` (None: float32; "float32", "bfloat16" or a dtype) is the computation
  dtype; `conv_impl` ("auto", "xla", "kernels"), `conv_algorithm` and `cpu_trig`
  are passed to `sfmnet_jax.cpu.accelerate` (a bfloat16 model stays plain Flax).
  Returns `(model, variables, info)`, where `info` holds `source`, `step`,
  `scale` (recorded, else the given one; None when neither is known) and
  `ema` (whether EMA weights were used).
  """
  dtype = None if dtype is None else compute_dtype(dtype)
  model, variables, info = _load_generator(path, use_ema, dtype, scale, scale_flag)
  if configured is not None:
    wanted = model_meta(model_from_meta(configured))
    if wanted != model_meta(model):
      logging.warning("%s holds a generator with %s, the config says %s: using the "
                      "checkpoint's", path, model_meta(model), wanted)
  return (accelerate(model, conv_impl, conv_algorithm, trig=cpu_trig), variables,
          info)


def _load_generator(path, use_ema, dtype, scale, scale_flag):
  kind, where, step = locate(path)
  overrides = {} if dtype is None else {"dtype": dtype}
  if kind == "file":
    model, variables = load_release_weights(where, **overrides)
    return model, variables, {"source": where, "step": None, "scale": scale, "ema": False}
  mngr = manager(where, create=False)
  step = mngr.latest_step() if step is None else step
  state, meta = restore(mngr, step)
  recorded = meta.get("scale")
  if scale is not None and recorded is not None and recorded != scale:
    raise ValueError(f"{path} holds a x{recorded} model and the data is x{scale}: set "
                     f"{scale_flag}={recorded}, or pick a x{scale} checkpoint")
  ema = use_ema and state.get("ema_params") is not None
  params = state["ema_params"] if ema else state["generator"]["params"]
  model = model_from_meta(meta["model"], **overrides)
  info = {"source": where, "step": step, "scale": recorded if recorded is not None else scale,
          "ema": ema}
  return model, {"params": _as_numpy(params)}, info
