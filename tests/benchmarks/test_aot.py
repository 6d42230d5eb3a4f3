"""Ahead-of-time compilation for a TPU without one: libtpu's compiler builds the tiny
generator's forward for a v5e topology's compile-only devices (in a child process, so that
libtpu is loaded nowhere else), and XLA's executable says what it is."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from sfmnet_jax.benchmarks import aot

TINY_CONFIG = """
from configs import demo

def get_config():
  config = demo.get_config()
  config.model.num_features = 8
  config.model.num_resblocks = 1
  config.data.patch_size = 32
  return config
"""


@pytest.mark.skipif(aot.find_libtpu() is None, reason=(
    "libtpu is not installed: pip install 'sfmnet-jax[aot]', or pip install libtpu==0.0.42 "
    f"--target {aot.DEFAULT_LIBTPU_DIR} (as .ci/run does)"))
def test_the_forward_compiles_for_a_tpu_topology_without_cpu_calls(tmp_path):
  (tmp_path / "tiny.py").write_text(TINY_CONFIG)
  out = tmp_path / "aot.json"
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
      [sys.executable, "-m", "sfmnet_jax.benchmarks", "aot", "--target=tpu:v5e:2x2",
       f"--config={tmp_path / 'tiny.py'}", "--per_device_batch=2", "--dtypes=bfloat16",
       "--programs=forward", f"--output={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "[1/1] compiling forward (bfloat16, 4 devices x 2 images)" in result.stdout
  row, = json.loads(out.read_text())["rows"]
  assert row["platform"] == "tpu" and row["device_kind"] == "TPU v5 lite"
  assert row["devices"] == 4 and row["global_batch"] == 8
  memory = row["memory"]
  assert memory["arguments"] > 8 * 32 * 32 * 3 * 4 / 4 and memory["total"] > 0
  assert memory["fits"] and memory["device_memory"] == 16 * 2 ** 30
  assert row["flops"] > 0 and row["bytes_accessed"] > 0 and row["roofline_s"] > 0
  assert row["cpu_only_custom_calls"] == []


def test_cpu_only_calls_are_recognised():
  """The check above can fail: the names of the CPU plugin's and XLA:CPU's own calls match."""
  from sfmnet_jax.cpu import kernels
  assert all(aot.CPU_ONLY.match(t) for t in kernels.TARGETS)
  assert aot.CPU_ONLY.match("ducc_fft") and not aot.CPU_ONLY.match("tpu_custom_call")


def test_targets_that_are_not_installed_or_unknown_say_what_to_do(monkeypatch, tmp_path):
  monkeypatch.setattr(aot, "find_libtpu", lambda: None)
  with pytest.raises(aot.TargetUnavailable, match=r"pip install 'sfmnet-jax\[aot\]'"):
    aot.target_devices("tpu:v5e:2x2")
  with pytest.raises(aot.TargetUnavailable, match="no GPU description"):
    aot.target_devices(f"cuda:{tmp_path / 'none.txtpb'}")
  with pytest.raises(ValueError, match="unknown target 'gpu:h100'"):
    aot.target_devices("gpu:h100")
  assert aot.roofline({"flops": 2e12, "bytes_accessed": 1e9}, aot.CHIPS["TPU v4"], "bfloat16",
                      8)["bound"] == "compute"
