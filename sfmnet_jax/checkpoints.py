"""Orbax checkpoints: one layout for training runs and converted release weights.

A checkpoint directory is an Orbax `CheckpointManager` directory; each step
folder holds two items:
  - `state`: a pytree of arrays. Training writes the whole train state
    (generator, discriminators, optimisers, EMA, step, RNG); `convert` writes
    only `{"generator": {"params": ...}}`.
  - `meta`: JSON: the generator's architecture (`model`), the scale, where the
    weights came from, and (training) the data iterator position.

`load_generator` reads any of: such a directory (latest step), one step
folder of it, or a release `.pth`/`.npz` file.
"""

import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from sfmnet_jax.models import SFMNet
from sfmnet_jax.release_weights import load_release_weights

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


def _split_step_dir(path: str) -> Tuple[str, Optional[int]]:
  """`.../run/123` (a step folder) -> (`.../run`, 123); a manager directory -> (path, None)."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip(os.sep))
  if base.isdigit() and os.path.isdir(os.path.join(path, "meta")):
    return os.path.dirname(path), int(base)
  return path, None


def load_generator(path: str, *, use_ema: bool = True, dtype=None):
  """Loads a generator from a checkpoint directory, step folder or release file.

  Returns `(model, variables, info)`, where `info` holds `source`, `step`,
  `scale` (None when unknown) and `ema` (whether EMA weights were used).
  """
  path = os.fspath(path)
  overrides = {} if dtype is None else {"dtype": dtype}
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"checkpoint not found: {path} (give a training workdir, one of its step "
        "folders, a folder written by `python -m sfmnet_jax.convert`, or a release "
        ".pth/.npz file)")
  if os.path.isfile(path):
    model, variables = load_release_weights(path, **overrides)
    return model, variables, {"source": path, "step": None, "scale": None, "ema": False}
  directory, step = _split_step_dir(path)
  mngr = manager(directory, create=False)
  if step is None and mngr.latest_step() is None:
    raise FileNotFoundError(f"{path}: a folder with no Orbax checkpoint in it")
  state, meta = restore(mngr, step)
  step = mngr.latest_step() if step is None else step
  generator = state["generator"]
  ema = use_ema and state.get("ema_params") is not None
  params = state["ema_params"] if ema else generator["params"]
  model = model_from_meta(meta["model"], **overrides)
  info = {"source": path, "step": step, "scale": meta.get("scale"), "ema": ema}
  return model, {"params": _as_numpy(params)}, info
