"""Initial parameters drawn on the host with numpy, for accelerated modules.

Every host initialises through the model's own `init_variables` (Flax's
`lazy_init`, the modules' threefry draws run op by op). A module the plugin
accelerates (`sfmnet_jax.cpu.accelerate` on the CPU backend) answers
`init`/`lazy_init` with `host_variables` instead: the same distributions (the
modules' PyTorch defaults, restated below by parameter name and tested against
the modules' own initialisers) drawn with numpy, in well under a second. The
values differ from the plain module's for the same seed (another random
stream); the plain module (`conv_impl="xla"`, `SFMNET_CPU_KERNELS=0`, a GPU or
TPU) draws the same values on every host.
"""

import jax
import numpy as np
from flax import traverse_util

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


def host_init(abstract_params, seed):
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


def host_variables(flax_init, rngs, *args):
  """{"params": ...} in the shapes `flax_init(rngs, *args)` gives (traced, nothing
  computed), drawn by `host_init` from a numpy stream seeded by the key's bits. Under a
  trace (a key with no value: `jax.eval_shape` of the initialiser) it is `flax_init`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  key = rngs["params"] if isinstance(rngs, dict) else rngs
  if isinstance(key, jax.core.Tracer):
    return flax_init(rngs, *args)
  abstract = jax.eval_shape(flax_init, rngs, *args)
  if set(abstract) != {"params"}:
    raise ValueError(f"host initialisation covers parameters only, not {sorted(abstract)}")
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
  return {"params": host_init(abstract["params"], seed)}
