"""The speed benchmark's bookkeeping (not its timings) and the XLA flags the package sets."""

import json
import os

import jax

from sfmnet_jax import benchmark, runtime


def test_configure_xla_flags_adds_respects_and_can_be_disabled():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  value = runtime.configure_xla_flags(env)
  assert value == ("--xla_force_host_platform_device_count=4 "
                   "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert runtime.configure_xla_flags(env) == value  # idempotent
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}
  assert runtime.configure_xla_flags(mine) == "--xla_cpu_experimental_ynn_fusion_type=default"
  off = {"SFMNET_XLA_FLAGS": "0"}
  assert runtime.configure_xla_flags(off) == "" and "XLA_FLAGS" not in off
  # This process imported sfmnet_jax before JAX started: the flag is in effect.
  assert "--xla_cpu_experimental_ynn_fusion_type=individual_dot" in os.environ["XLA_FLAGS"]


def test_model_benchmark_writes_consistent_numbers(tmp_path):
  out = tmp_path / "bench.json"
  assert benchmark.main(["model", "--num_features", "8", "--size", "32", "--batch_sizes",
                         "1,2", "--no_train", "--repeats", "2", "--output", str(out)]) == 0
  result = json.loads(out.read_text())
  assert result["size"] == 32 and result["num_features"] == 8 and result["dtype"] == "float32"
  b1, b2 = result["rows"]
  assert (b1["name"], b2["name"]) == ("forward_b1", "forward_b2")
  for row in (b1, b2):
    assert len(row["times_s"]) == 2 and row["min_s"] <= row["median_s"]
    assert abs(row["s_per_image"] * row["batch"] - row["median_s"]) < 1e-12
    assert abs(row["images_per_s"] * row["median_s"] - row["batch"]) < 1e-9
    assert abs(row["gflop_per_s"] * row["median_s"] - row["gflop_per_call"]) < 1e-9
    assert row["memory"]["argument_size_in_bytes"] > 0
  # XLA's FLOP count is per call: twice the images, twice the FLOPs (to 1%).
  assert abs(b2["gflop_per_call"] / b1["gflop_per_call"] - 2) < 0.02
  assert result["machine"]["platform"] == jax.default_backend() and result["machine"]["device"]
  assert result["memory"]["host_peak_rss_bytes"] > 0
