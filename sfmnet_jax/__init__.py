"""sfmnet_jax: SFMNet (Spatial-Frequency Mutual Learning for Face Super-resolution) in JAX/Flax."""

from sfmnet_jax import runtime

runtime.configure_xla_flags()  # before JAX starts its backend; see runtime.py

# pylint: disable=g-import-not-at-top,wrong-import-position

from sfmnet_jax.models import SFMNet, count_params, init_generator
from sfmnet_jax.release_weights import WeightFileError, load_release_weights

__all__ = ["SFMNet", "count_params", "init_generator", "load_release_weights",
           "WeightFileError"]
