import os  # noqa: I001  (XLA_FLAGS must be set before anything imports JAX)
# Tests compile many small programs: trade XLA:CPU's code optimisation (not its numerics)
# for ~40% faster compiles.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
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

import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "sfmnet_w16_s32.npz"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: takes minutes on a 2-core CPU; run with -m slow")


@pytest.fixture(scope="session")
def golden():
  """The release's golden vector: state_dict (`param/...`), NHWC input and outputs."""
  with np.load(GOLDEN) as d:
    data = {k: d[k] for k in d.files}
  nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
  return {
      "state_dict": {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")},
      "lr_up": nhwc(data["input/lr_up"]),
      "img_out": nhwc(data["output/img_out"]),
      "img_fre": nhwc(data["output/img_fre"]),
  }


@pytest.fixture(scope="session")
def golden_model():
  from sfmnet_jax import load_release_weights
  return load_release_weights(GOLDEN)
