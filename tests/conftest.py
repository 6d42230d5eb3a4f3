import os  # noqa: I001  (XLA_FLAGS must be set before anything imports JAX)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pathlib
import tempfile

import jax
import numpy as np
import pytest

# Identical computations compiled by several tests (or test processes) compile once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("SFMNET_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "sfmnet_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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
