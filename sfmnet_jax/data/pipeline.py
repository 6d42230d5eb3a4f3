"""tf.data pipelines of face crops: deterministic, sharded per process, resumable at any step.

Each example gives `hr` (128x128), `lr` (128/scale) and `lr_up` (LR upsampled
back to 128 with PIL's bicubic, as the release fed its network), float32 in
[0, 1]. LR is the dataset's own LR file when it has one, else made from HR
with PIL's bicubic; both resizes are bit-exact PIL (`resize.py`).

Training order is a pure function of (seed, step): epoch e visits the
examples in the permutation `default_rng([seed, e])`, global batch after
global batch (the last partial batch of an epoch is dropped); process p of P
reads the p-th slice of every global batch. A run resumed at step s
therefore sees exactly the batches an uninterrupted run would; the iterator
state is just {step, seed, num_examples, global_batch}.

Evaluation visits every example exactly once across devices and processes:
the last global batch is padded (with example 0) and `mask` is 0 there.
"""

import dataclasses
import os
from typing import Dict, Iterator, Optional

import numpy as np
import tensorflow as tf

from sfmnet_jax.data import degradation
from sfmnet_jax.data import resize
from sfmnet_jax.data.degradation import HR_SIZE
from sfmnet_jax.data.sources import Split


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class Sharding:
  """How a global batch is laid out: P processes x local devices x per-device examples."""

  global_batch: int
  process_index: int = 0
  process_count: int = 1
  local_devices: int = 1

  def __post_init__(self):
    parts = self.process_count * self.local_devices
    if self.global_batch % parts:
      raise ValueError(f"batch size {self.global_batch} must be divisible by the number of "
                       f"devices ({self.process_count} processes x {self.local_devices})")

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def local_slice(self, global_indices: np.ndarray) -> np.ndarray:
    start = self.process_index * self.local_batch
    return global_indices[start:start + self.local_batch]


def train_batch_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
  """The example indices of global batch `step` (all processes)."""
  steps_per_epoch = n // global_batch
  epoch, pos = divmod(step, steps_per_epoch)
  perm = epoch_permutation(seed, epoch, n)
  return perm[pos * global_batch:(pos + 1) * global_batch]


# Fixed parallelism instead of tf.data.AUTOTUNE: with autotuning on, freeing an iterator
# waits for tf.data's autotune thread to wake from its sleep (up to about a minute in
# TF 2.21), which held every training run for 40-80 s at exit. Decoding and PIL-exact
# resizing are cheap; one call per core keeps the pipeline far ahead of training.
PARALLEL_CALLS = max(2, os.cpu_count() or 2)
PREFETCH_BATCHES = 2


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.autotune.enabled = False
  options.deterministic = True
  return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def _decode(encoded, shape):
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, shape)


def _process(split: Split, scale: int, record: Dict[str, tf.Tensor], flip) -> Dict[str, tf.Tensor]:
  """Encoded record -> float32 hr, lr, lr_up (and flips them when `flip` is true)."""
  if split.hr_box is None:
    hr = _decode(record[split.image_key], (HR_SIZE, HR_SIZE, 3))
  else:
    top, left, side = split.hr_box
    image = tf.io.decode_image(record[split.image_key], channels=3, expand_animations=False)
    crop = image[top:top + side, left:left + side]
    hr = resize.tf_resize_uint8(tf.ensure_shape(crop, (side, side, 3)), (HR_SIZE, HR_SIZE))
  lr_size = degradation.lr_size(scale)
  if split.has_lr:
    lr = _decode(record["lr"], (lr_size, lr_size, 3))
  else:
    lr = degradation.make_lr(hr, scale, resize.tf_resize_uint8)
  hr, lr = tf.cond(flip, lambda: (hr[:, ::-1], lr[:, ::-1]), lambda: (hr, lr))
  lr_up = degradation.upsample_lr(lr, resize_fn=resize.tf_resize_uint8)
  to_float = lambda x: tf.cast(x, tf.float32) / 255.0  # noqa: E731
  return {"hr": to_float(hr), "lr": to_float(lr), "lr_up": to_float(lr_up)}


def _loader(split: Split):
  """A tf function: example index -> encoded record fields (strings)."""
  source = split.data_source()
  keys = [split.image_key] + (["lr"] if split.has_lr else [])

  def fetch(i):
    record = source[int(i)]
    return tuple(np.bytes_(record[k]) for k in keys)

  def load(i):
    values = tf.numpy_function(fetch, [i], [tf.string] * len(keys), stateful=False)
    return {k: tf.ensure_shape(v, ()) for k, v in zip(keys, values)}

  return load


def _device_layout(batch, sharding: Sharding):
  per_device = sharding.local_batch // sharding.local_devices
  return {k: tf.reshape(v, [sharding.local_devices, per_device] + v.shape[1:].as_list())
          for k, v in batch.items()}


def _crop_patch(example, size: int, scale: int, seed):
  """The same random size x size patch of hr and lr_up (offsets multiples of `scale`) and of lr."""
  positions = (HR_SIZE - size) // scale + 1
  offset = tf.random.stateless_uniform([2], seed=seed, minval=0, maxval=positions,
                                       dtype=tf.int32) * scale
  y, x = offset[0], offset[1]
  out = {k: tf.ensure_shape(example[k][y:y + size, x:x + size], (size, size, 3))
         for k in ("hr", "lr_up")}
  lr = example["lr"][y // scale:(y + size) // scale, x // scale:(x + size) // scale]
  out["lr"] = tf.ensure_shape(lr, (size // scale, size // scale, 3))
  return out


def check_patch_size(patch_size: Optional[int], scale: int) -> None:
  if patch_size and (patch_size % 8 or patch_size % scale or not 8 <= patch_size <= HR_SIZE):
    raise ValueError(f"patch_size must be a multiple of 8 and of the scale ({scale}) in "
                     f"[8, {HR_SIZE}], got {patch_size}")


def train_dataset(split: Split, scale: int, sharding: Sharding, *, seed: int, start_step: int = 0,
                  augment_flip: bool = False, patch_size: Optional[int] = None) -> tf.data.Dataset:
  """Endless training batches from `start_step` on, shaped (local_devices, per_device, ...).

  With `patch_size`, each example is a random aligned patch of the face (the
  LR-up patch is cut from the LR-up of the whole face, as full-face training
  sees it); the patch position is seeded like the flips.
  """
  degradation.check_scale(scale)
  check_patch_size(patch_size, scale)
  n, g = split.num_examples, sharding.global_batch
  if n < g:
    raise ValueError(f"{split.name} has {n} examples, fewer than one batch of {g}")

  def local_indices(step):
    idx = sharding.local_slice(train_batch_indices(seed, int(step), n, g))
    epoch = int(step) // (n // g)
    return idx.astype(np.int64), np.full(idx.shape, epoch, np.int64)

  load = _loader(split)

  def example(idx, epoch):
    record = load(idx)
    flip = tf.constant(False)
    # Randomness per (seed, epoch, example): independent of the process layout.
    if augment_flip:
      coin = tf.random.stateless_uniform([], seed=tf.stack([epoch * 7919 + seed, idx]))
      flip = coin < 0.5
    out = _process(split, scale, record, flip)
    if patch_size:
      out = _crop_patch(out, patch_size, scale, tf.stack([epoch * 7919 + seed + 1, idx]))
    return out

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = ds.map(lambda s: tf.numpy_function(local_indices, [s], [tf.int64, tf.int64],
                                          stateful=False))
  ds = ds.unbatch().map(example, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
  ds = ds.batch(sharding.local_batch, drop_remainder=True)
  ds = ds.map(lambda b: _device_layout(b, sharding))
  return _finish(ds)


def eval_num_batches(n: int, global_batch: int) -> int:
  return -(-n // global_batch)


def eval_dataset(split: Split, scale: int, sharding: Sharding,
                 limit: Optional[int] = None) -> tf.data.Dataset:
  """Every example (or the first `limit`) once; the last batch padded, `mask` 0 on padding.

  Batches carry `index` (the example's index in the split, -1 for padding).
  """
  n = split.num_examples if limit is None else min(limit, split.num_examples)
  g = sharding.global_batch
  padded = np.full(eval_num_batches(n, g) * g, -1, np.int64)
  padded[:n] = np.arange(n)
  local = np.concatenate([sharding.local_slice(b) for b in padded.reshape(-1, g)])
  load = _loader(split)

  def example(idx):
    record = load(tf.maximum(idx, 0))
    out = _process(split, scale, record, tf.constant(False))
    out["mask"] = tf.cast(idx >= 0, tf.float32)
    out["index"] = tf.cast(idx, tf.int32)
    return out

  ds = tf.data.Dataset.from_tensor_slices(local)
  ds = ds.map(example, num_parallel_calls=PARALLEL_CALLS, deterministic=True)
  ds = ds.batch(sharding.local_batch, drop_remainder=True)
  ds = ds.map(lambda b: _device_layout(b, sharding))
  return _finish(ds)


class TrainIterator:
  """Numpy batches of `train_dataset` that know their position (for checkpoints)."""

  def __init__(self, split: Split, scale: int, sharding: Sharding, *, seed: int,
               start_step: int = 0, augment_flip: bool = False, patch_size: Optional[int] = None):
    self.split, self.sharding, self.seed = split, sharding, seed
    self.step = start_step
    self._ds = train_dataset(split, scale, sharding, seed=seed, start_step=start_step,
                             augment_flip=augment_flip, patch_size=patch_size)
    self._it = iter(self._ds.as_numpy_iterator())

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = next(self._it)
    self.step += 1
    return batch

  def state(self, step: Optional[int] = None) -> Dict[str, int]:
    """Where batch `step` (default: the next one read) comes from: pass it to `check_state`
    and `start_step` to resume. A consumer that reads ahead (device prefetch) names the step
    it has trained on."""
    return {"step": self.step if step is None else int(step), "seed": self.seed,
            "num_examples": self.split.num_examples, "global_batch": self.sharding.global_batch}

  def check_state(self, state: Dict[str, int]) -> None:
    mine = self.state()
    for key in ("seed", "num_examples", "global_batch"):
      if key in state and state[key] != mine[key]:
        raise ValueError(f"the checkpoint's data iterator had {key}={state[key]}, this run has "
                         f"{mine[key]}: resuming would not reproduce the data order")
