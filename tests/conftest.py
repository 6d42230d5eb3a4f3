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

from sfmnet_jax.cpu import process  # noqa: E402  (imports no JAX)

process.configure_xla_flags()  # the flags the entry points run with

import pathlib

import numpy as np
import pytest

import helpers


# The two workers (pytest.ini: --dist loadfile --no-loadscope-reorder) take test files in
# collection order, so the files that start training processes or compile the most go first
# and the short ones fill in at the end. Only the suite's wall time depends on this order.
SLOW_FILES_FIRST = ("training/test_runs.py", "model/test_generator.py", "training/test_steps.py",
                    "evaluation/test_evaluation.py", "cpu/test_plugin.py",
                    "training/test_accelerator_lowering.py", "benchmarks/test_benchmarks.py")


def pytest_collection_modifyitems(config, items):
  del config
  tests = pathlib.Path(__file__).parent

  def rank(item):
    name = pathlib.Path(item.fspath).relative_to(tests).as_posix()
    return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

  items.sort(key=rank)  # stable: the other files keep their order


@pytest.fixture(scope="session")
def golden():
  return helpers.load_golden()


@pytest.fixture(scope="session")
def golden_model():
  """(model, variables) of the release's golden vector: the plain Flax model (XLA's ops)."""
  from sfmnet_jax import load_release_weights
  return load_release_weights(helpers.GOLDEN)


@pytest.fixture(scope="session")
def golden_port_outputs(golden, golden_model):
  """(img_out, img_fre) of the plain golden model on the golden input in this process: what
  tests of loading and equivalence compare to (bit-for-bit comparisons need the same
  program; the golden vector itself is `model/test_generator.py`'s)."""
  import jax
  model, variables = golden_model
  return tuple(np.asarray(a) for a in jax.jit(model.apply)(variables, golden["lr_up"]))
