"""sfmnet_jax: SFMNet (Spatial-Frequency Mutual Learning for Face Super-resolution) in JAX/Flax.

Importing the package changes nothing in the process. The entry points
(`train.py`, `evaluate.py`, `python -m sfmnet_jax.*`) call
`sfmnet_jax.runtime.prepare_process()` first, which sets the XLA:CPU flags
this project is tuned with; library users may call it themselves before JAX
starts (see `runtime.py`).
"""

import importlib

_EXPORTS = {"SFMNet": "models", "count_params": "models", "init_generator": "models",
            "load_release_weights": "release_weights", "WeightFileError": "release_weights"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy, so that `import sfmnet_jax.runtime` does not import JAX
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"sfmnet_jax.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'sfmnet_jax' has no attribute {name!r}")
