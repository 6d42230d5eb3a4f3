"""Initial parameters drawn on the host with numpy, for the CPU backend.

The modules' own initialisers (`sfmnet_jax.model.init_variables`, `model.init`'s
threefry draws run op by op) are what GPUs and TPUs run. On the CPU backend
`init_params` draws the same distributions (the modules' PyTorch defaults,
restated below by parameter name and tested against the modules' own
initialisers) with numpy instead, in well under a second;
`SFMNET_CPU_KERNELS=0` turns it off too. The values differ from
`model.init`'s for the same seed (another random stream).
"""

import jax
import numpy as np
from flax import traverse_util

from sfmnet_jax.cpu import kernels
from sfmnet_jax.model.generator import abstract_variables, init_variables
from sfmnet_jax.model.layers import PReLU


def _leaf_rule(path, shape, kernel_shapes):
  """('uniform', bound) or ('constant', value) for a parameter of the networks.

  kernel: U(+-1/sqrt(fan_in)) with fan_in = prod(shape[:-1]); bias: the same
  bound as its sibling kernel; PReLU `weight` 0.25; `scale` and `temperature` 1.
  """
  name = path[-1]
  if name == "kernel":
    return "uniform", 1.0 / np.sqrt(np.prod(shape[:-1]))
  if name == "bias":
    return "uniform", 1.0 / np.sqrt(np.prod(kernel_shapes[path[:-1]][:-1]))
  if name == "weight":
    return "constant", PReLU.init_value
  if name in ("scale", "temperature"):
    return "constant", 1.0
  raise ValueError(f"no initialiser rule for parameter {'/'.join(path)}")


def host_init(abstract_params, seed: int):
  """Parameters of the given shapes, drawn with numpy as the modules' initialisers draw them."""
  flat = traverse_util.flatten_dict(abstract_params)
  kernel_shapes = {p[:-1]: tuple(v.shape) for p, v in flat.items() if p[-1] == "kernel"}
  rng = np.random.default_rng(seed)
  out = {}
  for path in sorted(flat):
    shape, dtype = tuple(flat[path].shape), flat[path].dtype
    kind, value = _leaf_rule(path, shape, kernel_shapes)
    if kind == "uniform":
      out[path] = rng.uniform(-value, value, size=shape).astype(dtype)
    else:
      out[path] = np.full(shape, value, dtype)
  return traverse_util.unflatten_dict(out)


def init_params(model, seed: int = 0, image_size=(8, 8), platform=None):
  """`model`'s initial parameters: drawn on the host on the CPU backend (see above), else
  `model.init` compiled by XLA. `image_size` shapes the trace only (discriminators'
  parameters depend on it)."""
  platform = platform or jax.default_backend()
  if platform != "cpu" or not kernels.enabled():
    return init_variables(model, seed, image_size)["params"]
  return host_init(abstract_variables(model, image_size)["params"], seed)
