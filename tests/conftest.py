import os  # noqa: I001  (XLA_FLAGS must be set before anything imports JAX)

from helpers import FAST_COMPILE_FLAGS

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Identical computations compiled by several tests (or by the training subprocesses they
# start, which inherit these variables) compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    __import__("tempfile").gettempdir(), "sfmnet_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from sfmnet_jax import runtime  # noqa: E402  (imports no JAX)

runtime.configure_xla_flags()  # the flags the entry points run with

import pytest

import helpers


@pytest.fixture(scope="session")
def golden():
  return helpers.load_golden()


@pytest.fixture(scope="session")
def golden_model():
  from sfmnet_jax import load_release_weights
  return load_release_weights(helpers.GOLDEN)
