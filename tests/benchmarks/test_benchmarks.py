"""The benchmarks' output (not their timings): rows, FLOP counts, cost analysis and roofline
estimates for accelerators, the release comparison's rounds, the profile's attribution."""

import json
import sys

import jax
import pytest

from sfmnet_jax.benchmarks import __main__ as benchmark
from sfmnet_jax.benchmarks import roofline


def test_compare_without_torch_says_how_to_get_it(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)
  assert benchmark.main(["compare", "--release_dir=/nonexistent"]) == 1
  err = capsys.readouterr().err
  assert "pip install torch" in err and "github.com/wcy-cs/SFMNet" in err


def test_compare_rounds_alternate_and_take_medians(monkeypatch, tmp_path):
  """--rounds=3: release and port take turns; each side's median time and the median
  of the rounds' ratios (not the ratio of medians) are reported."""
  from sfmnet_jax.benchmarks import release as benchmark_release  # pylint: disable=g-import-not-at-top
  calls, release_s, port_s = [], iter([2.0, 3.0, 10.0]), iter([1.0, 1.0, 4.0])

  class FakeTorch:
    __version__ = "0.fake"

    @staticmethod
    def get_num_threads():
      return 2

  def fake_release(release_dir, width, repeats, warmup_steps):
    calls.append(("release", width))
    return {"psnr_step_b8": next(release_s), "device": "cpu"}

  def fake_port(width, repeats, conv_algorithm="auto"):  # pylint: disable=unused-argument
    calls.append(("port", width))
    return {"psnr_step_b8": next(port_s)}, {"psnr_step_b8": 5.0}

  monkeypatch.setattr(benchmark_release, "load_release_generator", lambda d: (None, FakeTorch))
  monkeypatch.setattr(benchmark_release, "time_release_apart", fake_release)
  monkeypatch.setattr(benchmark_release, "time_port", fake_port)
  out = tmp_path / "c.json"
  assert benchmark.main(["compare", "--release_dir=x", "--widths=16", "--conv_algorithms=auto",
                         "--rounds=3", f"--output={out}"]) == 0
  assert calls == [("release", 16), ("port", 16)] * 3
  row, = json.loads(out.read_text())["rows"]
  assert row["rounds_speedup"] == [2.0, 3.0, 2.5]
  assert (row["release_s"], row["port_s"], row["speedup"]) == (3.0, 1.0, 2.5)


@pytest.mark.parametrize("argv, message", [(["nonsense"], "unknown benchmark"),
                                           (["model", "--batch_sizes=x"], "batch_sizes")])
def test_benchmark_usage_errors(argv, message, capsys):
  assert benchmark.main(argv) == 2
  assert message in capsys.readouterr().err


def test_profile_names_each_op_by_kind_and_block():
  """`benchmark profile`'s attribution: closed-form layer paths, and a compiled function whose
  convolution, dot and FFT sit in known named scopes."""
  from sfmnet_jax.benchmarks import profile as bp
  assert bp.source_of("jit(_fun)/transpose(jvp(SFMNet))/up2_fre_mo/layers_0/post/dot_general") \
      == "up2_fre_mo (backward)"
  assert bp.source_of("jit(<lambda>)/SFMNet/layers_12/fre_att/split") == "conv_fuse[12]"
  assert bp.source_of("pmap(psnr_step)/reduce_sum") == "(step: reduce_sum)"
  # The model's compact method appears as a path component of its own.
  assert bp.source_of("jit(_fun)/transpose(jvp(SFMNet))/SFMNet._generate/down1_fre/layers_0/"
                      "conv_general_dilated") == "down1_fre (backward)"
  # A custom call is named by its target (which C++ kernel ran).
  line = ('  %ffi_call.7 = f32[8,4,4,16]{3,2,1,0} custom-call(%a, %b), custom_call_target='
          '"sfmnet_conv3x3", metadata={op_name="jit(f)/SFMNet/SFMNet._generate/head/ffi_call"}')
  assert bp.op_table("ENTRY %main {\n" + line + "\n}\n") == {
      "ffi_call.7": ("sfmnet_conv3x3", "head")}

  def fn(x, k, w):
    with jax.named_scope("myconv"):
      y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    with jax.named_scope("mydot"):
      z = y.reshape(-1, 8) @ w
    with jax.named_scope("myfft"):
      return jax.numpy.abs(jax.numpy.fft.rfft2(z.reshape(2, 16, 16, 8), axes=(1, 2)))

  shapes = [jax.ShapeDtypeStruct(s, "float32") for s in ((2, 16, 16, 4), (3, 3, 4, 8), (8, 8))]
  compiled = jax.jit(fn).lower(*shapes).compile()
  table = bp.op_table(compiled.as_text())
  kinds = {(kind, block.split("/")[0]) for kind, block in table.values()}
  assert {("convolution", "myconv"), ("fft", "myfft")} <= kinds, kinds
  assert any(kind == "dot" and block.startswith("mydot") for kind, block in table.values()), kinds

  args = [jax.numpy.ones(s.shape) for s in shapes]
  result = bp.profile(lambda: jax.block_until_ready(compiled(*args)), compiled.as_text(),
                      repeats=1)
  assert result["by_kind"].get("fft", 0) > 0 and "myfft" in result["by_block"], result
  assert all(op["name"] in table for op in result["top_ops"])


def test_roofline_estimates_are_the_larger_of_compute_and_memory_time():
  device = roofline.Device("Test chip", "tpu", {"float32": 100.0, "bfloat16": 200.0}, 2.0, "-")
  cost = {"flops": 1e12, "bytes_accessed": 4e12}  # 10 ms of compute, 2 s of memory traffic
  r = roofline.roofline(cost, device, "float32")
  assert r["compute_bound_s"] == pytest.approx(0.01) and r["memory_bound_s"] == pytest.approx(2.0)
  assert r["estimate_s"] == pytest.approx(2.0) and r["bound"] == "memory"
  assert roofline.roofline({"flops": 1e15, "bytes_accessed": 1.0}, device, "bfloat16")[
      "bound"] == "compute"


def test_model_benchmark_rows_cost_analysis_and_labelled_estimates(tmp_path, capsys):
  """`benchmark model`: timed forward rows whose FLOPs scale with the batch, and the PSNR step
  and the forward lowered for a GPU and a TPU (the plain model, nothing runs there) with
  XLA's FLOP and byte counts and roofline estimates."""
  out = tmp_path / "bench.json"
  assert benchmark.main(["model", "--num_features=8", "--size=32", "--batch_sizes=1,2",
                         "--train_batch=4", "--stages=psnr", "--repeats=2", "--notrain",
                         f"--output={out}"]) == 0
  printed = capsys.readouterr().out
  assert "ESTIMATED roofline" in printed and "not measured" in printed
  result = json.loads(out.read_text())
  assert result["size"] == 32 and result["num_features"] == 8 and result["dtype"] == "float32"
  b1, b2 = result["rows"]
  assert (b1["name"], b2["name"]) == ("forward_b1", "forward_b2")
  assert all(len(row["times_s"]) == 2 for row in (b1, b2))
  # XLA's FLOP count is per call: twice the images, twice the FLOPs (to 1%).
  assert abs(b2["gflop_per_call"] / b1["gflop_per_call"] - 2) < 0.02
  assert result["machine"]["platform"] == jax.default_backend() and result["machine"]["device"]
  estimates = result["accelerator_estimates"]
  step, forward = estimates["psnr_step_b4"], estimates["forward_b1"]
  assert [r["device"] for r in step] == [d.name for d in roofline.DEVICES]
  assert {r["platform"] for r in step} == {"cuda", "tpu"}
  for r in step + forward:
    assert r["flops"] > 0 and r["bytes_accessed"] > 0 and r["estimate_s"] > 0
  # A training step (forward, backward, Adam) of 4 images costs more than 4 forwards of 1.
  assert step[0]["flops"] > 4 * forward[0]["flops"]
  # The accelerators' count of the forward is the CPU row's to 20% (on the CPU the C++
  # kernels' FLOPs are counted by formula, and the phase is another program).
  assert abs(forward[0]["flops"] / (b1["gflop_per_call"] * 1e9) - 1) < 0.2


def test_prepare_benchmark_compares_outputs_and_estimates_from_the_rate(tmp_path, capsys):
  out = tmp_path / "prepare.json"
  assert benchmark.main(["prepare", "--photos=3", "--detector=hog", "--beam_workers=1",
                         "--beam_pipeline_options=runner=DirectRunner,direct_num_workers=1,"
                         "direct_running_mode=in_memory", f"--work_dir={tmp_path / 'w'}",
                         f"--output={out}"]) == 0
  result = json.loads(out.read_text())
  assert result["same_outputs"] is True
  one, beam = result["rows"]["one_process"], result["rows"]["beam"]
  assert one["counts"] == beam["counts"] and one["counts"]["written"] == 3
  assert abs(beam["photos_per_s"] * beam["seconds"] - 3) < 1e-6
  # CelebA on 16 workers: its photos over 16 times the per-worker rate, in hours.
  assert abs(result["estimated_hours"]["CelebA"]["16"] * 3600 * 16 * beam["photos_per_s"]
             - 202_599) < 1e-3 * 202_599
  assert "same PNG bytes and decisions: True" in capsys.readouterr().out
