"""The authors' PyTorch `state_dict` <-> Flax parameters, by one generic rule.

A release name maps to a Flax path by splitting at dots and writing every
numeric component `N` (a child of an `nn.Sequential`/`ModuleList`) as
`layers_N`; leaves: a 4-D `weight` is a conv kernel (out, in, kh, kw) ->
`kernel` (kh, kw, in, out), a 2-D `weight` is a linear layer -> `kernel`
transposed, everything else (biases, PReLU `weight`, `temperature`,
`re_scale.scale`) keeps its name and shape. The mapping is bijective, so the
same code exports Flax parameters back to a release-format `state_dict`.
"""

import os
import re
from typing import Dict, Mapping, Tuple

import jax
import numpy as np
from flax import traverse_util

from sfmnet_jax.weights import torch_pickle
from sfmnet_jax.model.generator import SFMNet, abstract_variables

_NUMERIC = re.compile(r"^\d+$")
# Release parameters the port does not use: the FuseBlocks' second attention
# (`spa_att`), which the release defines but never calls.
_UNUSED_RELEASE = re.compile(r"^conv_fuse\.\d+\.spa_att\.")
NPZ_PREFIX = "param/"


class WeightFileError(ValueError):
  """A weight file that is not a compatible SFMNet state_dict."""


def flax_path(name: str) -> Tuple[str, ...]:
  """Release `state_dict` name -> Flax parameter path (leaf named as in Flax)."""
  parts = [f"layers_{p}" if _NUMERIC.match(p) else p for p in name.split(".")]
  return tuple(parts)


def to_flax_array(name: str, value: np.ndarray) -> Tuple[Tuple[str, ...], np.ndarray]:
  path = flax_path(name)
  value = np.asarray(value)
  if path[-1] == "weight" and value.ndim == 4:
    return path[:-1] + ("kernel",), value.transpose(2, 3, 1, 0)
  if path[-1] == "weight" and value.ndim == 2:
    return path[:-1] + ("kernel",), value.T
  return path, value


def to_release_name(path: Tuple[str, ...], value: np.ndarray) -> Tuple[str, np.ndarray]:
  """Flax parameter path and value -> release `state_dict` name and value (PyTorch layout)."""
  value = np.asarray(value)
  parts = [p[len("layers_"):] if re.match(r"^layers_\d+$", p) else p for p in path]
  if parts[-1] == "kernel":
    parts[-1] = "weight"
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return ".".join(parts), value


def params_to_state_dict(params) -> Dict[str, np.ndarray]:
  """Flax parameters -> release-format `state_dict` (numpy arrays, PyTorch layout)."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  return dict(to_release_name(path, value) for path, value in flat.items())


def release_loadable(state_dict: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """A port-made state_dict that the release's strict `load_state_dict` takes: with the
  FuseBlocks' `spa_att` entries, which the release defines but never calls, as copies of
  their `fre_att` (values without effect on the release's outputs or training)."""
  out = dict(state_dict)
  for name, value in state_dict.items():
    match = re.match(r"^(conv_fuse\.\d+\.)fre_att\.(.*)$", name)
    if match:
      out.setdefault(f"{match.group(1)}spa_att.{match.group(2)}", value)
  return out


def infer_architecture(state_dict: Mapping[str, np.ndarray]) -> Dict[str, int]:
  """`num_features` and `num_resblocks` from the shapes and names of a release state_dict."""
  key = "head.0.layers.weight"
  if key not in state_dict:
    raise WeightFileError(
        f"not an SFMNet generator state_dict: no '{key}' among its "
        f"{len(state_dict)} entries (first: {sorted(state_dict)[:5]})")
  num_features = int(np.shape(state_dict[key])[0])
  # ResidualGroup.body holds num_resblocks ResBlocks, then the ConvAct at index num_resblocks.
  blocks = {int(m.group(1)) for k in state_dict
            if (m := re.match(r"^down1\.1\.body\.(\d+)\.", k))}
  if not blocks:
    raise WeightFileError("not an SFMNet generator state_dict: no 'down1.1.body.N' entries")
  return {"num_features": num_features, "num_resblocks": max(blocks)}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], abstract_params, description: str,
                       skip=None):
  """A release state_dict as the Flax parameters `abstract_params` describes, checked.

  Raises WeightFileError listing every missing key, unexpected key and shape
  mismatch. Names matching the regex `skip` are accepted and ignored.
  """
  expected = traverse_util.flatten_dict(abstract_params)
  converted, unexpected, mismatched, mismatched_paths = {}, [], [], set()
  for name, value in state_dict.items():
    if skip is not None and skip.match(name):
      continue
    path, array = to_flax_array(name, value)
    if path not in expected:
      unexpected.append(name)
    elif tuple(array.shape) != tuple(expected[path].shape):
      _, want = to_release_name(path, np.zeros(expected[path].shape))
      mismatched.append(f"{name}: file {tuple(np.shape(value))}, model {want.shape}")
      mismatched_paths.add(path)
    else:
      converted[path] = np.asarray(array, np.float32)
  missing = sorted(to_release_name(p, np.zeros(s.shape))[0] for p, s in expected.items()
                   if p not in converted and p not in mismatched_paths)
  if missing or unexpected or mismatched:
    lines = [f"the weights do not fit {description}:"]
    for title, items in (("missing", missing), ("unexpected", sorted(unexpected)),
                         ("shape mismatch", mismatched)):
      if items:
        lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20])
                     + (" ..." if len(items) > 20 else ""))
    raise WeightFileError("\n".join(lines))
  return traverse_util.unflatten_dict(converted)


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], model: SFMNet):
  """Converts a release generator state_dict to `model`'s parameters (see convert_state_dict).

  `spa_att` entries are accepted and ignored when the model shares the fusion
  attention (the release's behaviour).
  """
  description = (f"SFMNet(num_features={model.num_features}, num_resblocks="
                 f"{model.num_resblocks}, share_fusion_attention={model.share_fusion_attention})")
  return convert_state_dict(state_dict, abstract_variables(model)["params"], description,
                            _UNUSED_RELEASE if model.share_fusion_attention else None)


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a release state_dict from a `.pth`/`.pt` file or an `.npz` (keys optionally `param/...`)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"weight file not found: {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        items = {k: data[k] for k in data.files}
    except Exception as e:  # corrupt zip, pickled objects, ...
      raise WeightFileError(f"{path}: not a readable .npz of arrays ({e})") from e
    if any(k.startswith(NPZ_PREFIX) for k in items):
      items = {k[len(NPZ_PREFIX):]: v for k, v in items.items() if k.startswith(NPZ_PREFIX)}
    return items
  try:
    return torch_pickle.load_state_dict(path)
  except ValueError as e:
    raise WeightFileError(str(e)) from e


def load_release_weights(path, *, share_fusion_attention: bool = True, dtype=None,
                         num_heads: int = 8):
  """Loads the authors' generator weights: returns `(model, variables)`.

  `path` is a PyTorch `.pth` state_dict or an `.npz` of state_dict entries
  (optionally prefixed `param/`). `num_features` and `num_resblocks` are
  inferred from the shapes.
  """
  state_dict = read_state_dict(path)
  arch = infer_architecture(state_dict)
  kwargs = {} if dtype is None else {"dtype": dtype}
  model = SFMNet(num_heads=num_heads, share_fusion_attention=share_fusion_attention,
                 **arch, **kwargs)
  try:
    params = state_dict_to_params(state_dict, model)
  except WeightFileError as e:
    raise WeightFileError(f"{path}: {e}") from None
  return model, {"params": params}


def load_release_discriminator(weights, kind: str):
  """(module, variables) of the release's `network_9layers` ("spatial") or `network_9layers_fft`
  ("frequency") from a state_dict, or a `.pth`/`.npz` file holding one."""
  from sfmnet_jax.model import discriminators  # pylint: disable=g-import-not-at-top
  classes = {"spatial": discriminators.SpatialDiscriminator,
             "frequency": discriminators.FrequencyDiscriminator}
  if kind not in classes:
    raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
  state_dict = weights if isinstance(weights, Mapping) else read_state_dict(weights)
  module = classes[kind]()
  abstract = abstract_variables(module, discriminators.INPUT_SIZE)["params"]
  return module, {"params": convert_state_dict(state_dict, abstract, type(module).__name__)}
