"""Training: the losses (`losses.py`), the model and train state a config describes
(`state.py`), the pmap-ed steps (`steps.py`) and `train_and_evaluate` (`loop.py`)."""

import importlib


def __getattr__(name):  # lazy: `training.steps` imports no TensorFlow
  if name == "train_and_evaluate":
    return importlib.import_module("sfmnet_jax.training.loop").train_and_evaluate
  raise AttributeError(f"module 'sfmnet_jax.training' has no attribute {name!r}")
