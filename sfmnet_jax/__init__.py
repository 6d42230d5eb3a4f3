"""sfmnet_jax: SFMNet (Spatial-Frequency Mutual Learning for Face Super-resolution) in JAX/Flax.

The package is split into rooms, each importing only from those before it:
`model` (the plain Flax networks), `cpu` (the optional CPU plugin), `weights`
(release files, Orbax checkpoints), `data` (tf.data pipeline, PIL-exact
resize, datasets), `faces` (detection, alignment, whole photos), `evaluation`
(metrics, reports), `training` (losses, steps, the loop), `benchmarks` and
`apps` (the command-line entry points and the web demo).

Importing the package changes nothing in the process and imports no JAX until
a name below is used. The entry points call `sfmnet_jax.runtime.prepare_process()`
first (CPU-only hosts: XLA:CPU flags and memory settings; see `cpu/process.py`).
"""

import importlib

_EXPORTS = {
    "SFMNet": "model.generator", "count_params": "model.generator",
    "init_generator": "model.generator", "jitted_apply": "model.generator",
    "SpatialDiscriminator": "model.discriminators",
    "FrequencyDiscriminator": "model.discriminators",
    "load_release_weights": "weights.release", "load_release_discriminator": "weights.release",
    "WeightFileError": "weights.release", "load_generator": "weights.checkpoints",
    "accelerate": "cpu", "train_and_evaluate": "training.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy, so that `import sfmnet_jax.runtime` does not import JAX
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"sfmnet_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'sfmnet_jax' has no attribute {name!r}")
