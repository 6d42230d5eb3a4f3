"""Ahead-of-time compilation for a TPU without one: libtpu's compiler builds the tiny
generator's forward for a v5e topology's compile-only devices (in a child process, so that
libtpu is loaded nowhere else), XLA's executable says what it is, and the breakdown of its
bytes and FLOPs by model part adds up to the compiler's own totals."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from sfmnet_jax.accelerators import chips, targets

TINY_CONFIG = """
from configs import demo

def get_config():
  config = demo.get_config()
  config.model.num_features = 8
  config.model.num_resblocks = 1
  config.data.patch_size = 32
  return config
"""


@pytest.mark.skipif(targets.find_libtpu() is None, reason=(
    "libtpu is not installed: pip install 'sfmnet-jax[aot]', or pip install libtpu==0.0.42 "
    f"--target {targets.DEFAULT_LIBTPU_DIR} (as .ci/run does)"))
def test_the_forward_compiles_for_a_tpu_topology_without_cpu_calls(tmp_path):
  (tmp_path / "tiny.py").write_text(TINY_CONFIG)
  out = tmp_path / "aot.json"
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
      [sys.executable, "-m", "sfmnet_jax.apps.benchmark", "aot", "--target=tpu:v5e:2x2",
       f"--config={tmp_path / 'tiny.py'}", "--per_device_batch=2", "--dtypes=bfloat16",
       "--programs=forward", "--breakdown", f"--output={out}"],
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
  table, = json.loads((tmp_path / "aot_breakdown.json").read_text())["tables"]
  # XLA's analysis of each instruction alone sums to its analysis of the whole module, and
  # the FLOPs to the compiler's count; the bytes padded to the TPU's tiles (an estimate)
  # come within 10% of the TPU compiler's own count (3.2% at C=16, docs/aot.md).
  whole, parts = table["xla_module_analysis"], table["sum_of_instructions"]
  assert parts["flops"] == pytest.approx(whole["flops"], rel=1e-4)
  assert parts["flops"] == pytest.approx(row["flops"], rel=1e-4)
  assert parts["bytes"] == pytest.approx(whole["bytes"], rel=1e-4)
  assert parts["padded_bytes"] == pytest.approx(row["bytes_accessed"], rel=0.10)
  assert parts["padded_bytes"] > 1.5 * parts["bytes"]  # 3 colours and 8 channels in lanes
  named = {p["part"] for p in table["parts"]}
  assert {"FuseBlock: channel attention (forward)", "FreqBlock: spectrum (rfft2) (forward)",
          "ResidualGroup (forward)"} <= named, named
  assert sum(p["padded_bytes"] for p in table["parts"]) == pytest.approx(parts["padded_bytes"])


def test_targets_that_are_not_installed_or_unknown_say_what_to_do(monkeypatch, tmp_path):
  monkeypatch.setattr(targets, "find_libtpu", lambda: None)
  with pytest.raises(targets.TargetUnavailable, match=r"pip install 'sfmnet-jax\[aot\]'"):
    targets.target_devices("tpu:v5e:2x2")
  with pytest.raises(targets.TargetUnavailable, match="no GPU description"):
    targets.target_devices(f"cuda:{tmp_path / 'none.txtpb'}")
  with pytest.raises(ValueError, match="unknown target 'gpu:h100'"):
    targets.target_devices("gpu:h100")


def test_the_roofline_is_the_larger_of_compute_and_memory_time():
  chip = chips.Chip("Test chip", 1e9, {"float32": 100.0, "bfloat16": 200.0}, 2.0, "-")
  r = chips.roofline({"flops": 1e12, "bytes_accessed": 4e12}, chip, "float32", 8)
  assert r["compute_bound_s"] == pytest.approx(0.01) and r["memory_bound_s"] == pytest.approx(2.0)
  assert r["roofline_s"] == pytest.approx(2.0) and r["bound"] == "memory"
  assert r["roofline_over_compute_bound"] == pytest.approx(200.0)
  assert r["images_per_s_per_chip"] == pytest.approx(4.0)
  assert chips.roofline({"flops": 2e12, "bytes_accessed": 1e9}, chips.CHIPS["TPU v4"],
                        "bfloat16", 8)["bound"] == "compute"
  assert chips.roofline({"flops": 1.0, "bytes_accessed": 1.0}, None, "float32") == {}
