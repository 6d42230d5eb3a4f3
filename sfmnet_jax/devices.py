"""Arrays on the local devices as `jax.pmap` reads and returns them (axis "batch").

Every step and forward of training and evaluation is one `jax.pmap` over the
local devices, so 1 CPU, 8 GPUs and a TPU pod run the same code.
"""

import collections
from typing import Callable

import jax
import numpy as np

AXIS = "batch"


def _device_axis_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def shard(batch):
  """A host batch shaped (local devices, per device, ...) placed on the devices as pmap reads it."""
  sharding = _device_axis_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


def prefetch_to_devices(iterator, size: int = 2):
  """Yields `shard(batch)` of `iterator`'s batches, `size` batches ahead (transfers overlap steps)."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(shard(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def replicate(tree):
  """Copies of `tree` on every local device, laid out exactly as pmap returns its outputs.

  (flax.jax_utils.replicate's layout differs, so the second step would compile again.)
  """
  sharding = _device_axis_sharding()
  n = jax.local_device_count()
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.stack([np.asarray(x)] * n), sharding), tree)


def unreplicate(tree):
  """The first device's copy of a replicated tree, as numpy arrays."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def pmap_generator(model) -> Callable:
  """(replicated params, (devices, batch, H, W, 3) lr_up) -> (img_out, img_fre)."""
  return jax.pmap(lambda params, lr_up: model.apply({"params": params}, lr_up), axis_name=AXIS)
