"""The benchmarks' output (not their timings): rows, FLOP counts, the release comparison's
rounds, the profile's attribution, the input pipeline's counts."""

import json
import sys

import jax
import pytest

from sfmnet_jax.apps import benchmark


def test_compare_without_torch_says_how_to_get_it(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)
  assert benchmark.main(["compare", "--release_dir=/nonexistent"]) == 1
  err = capsys.readouterr().err
  assert "pip install torch" in err and "github.com/wcy-cs/SFMNet" in err


def test_compare_rounds_alternate_and_take_medians(monkeypatch, tmp_path):
  """--rounds=3: release and port take turns; each side's median time and the median
  of the rounds' ratios (not the ratio of medians) are reported."""
  from sfmnet_jax.benchmarks import versus_release as benchmark_release  # pylint: disable=g-import-not-at-top
  calls, release_s, port_s = [], iter([2.0, 3.0, 10.0]), iter([1.0, 1.0, 4.0])

  class FakeTorch:
    __version__ = "0.fake"

    @staticmethod
    def get_num_threads():
      return 2

  def fake_release(release_dir, width, repeats, warmup_steps, num_resblocks):
    calls.append(("release", width, num_resblocks))
    return {"psnr_step_b8": next(release_s), "device": "cpu"}

  def fake_port(config, width, repeats, conv_algorithm="auto"):  # pylint: disable=unused-argument
    calls.append(("port", width, config.model.num_resblocks))
    return {"psnr_step_b8": next(port_s)}, {"psnr_step_b8": 5.0}

  monkeypatch.setattr(benchmark_release, "load_release_generator", lambda d: (None, FakeTorch))
  monkeypatch.setattr(benchmark_release, "time_release_apart", fake_release)
  monkeypatch.setattr(benchmark_release, "time_port", fake_port)
  out = tmp_path / "c.json"
  assert benchmark.main(["compare", "--release_dir=x", "--widths=16", "--conv_algorithms=auto",
                         "--rounds=3", "--config.model.num_resblocks=3", f"--output={out}"]) == 0
  assert calls == [("release", 16, 3), ("port", 16, 3)] * 3
  row, = json.loads(out.read_text())["rows"]
  assert row["rounds_speedup"] == [2.0, 3.0, 2.5]
  assert (row["release_s"], row["port_s"], row["speedup"]) == (3.0, 1.0, 2.5)


@pytest.mark.parametrize("argv, message", [
    (["nonsense"], "unknown command 'nonsense'"), (["model", "--batch_sizes=x"], "batch_sizes"),
    (["model", "--config.model.no_such_field=1"], "no_such_field"),
    (["aot", "--num_features=8"], "num_features"),  # the model's width is a config field
    (["twin"], "twin needs --output")])
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


def test_model_benchmark_rows_and_flops(tmp_path, capsys):
  """`benchmark model` of the config given (its overrides applied): timed forward rows whose
  FLOPs (XLA's count of the plain model) scale with the batch."""
  out = tmp_path / "bench.json"
  assert benchmark.main(["model", "--config=configs/demo.py", "--config.model.num_features=8",
                         "--config.data.patch_size=32", "--batch_sizes=1,2", "--repeats=2",
                         "--notrain", f"--output={out}"]) == 0
  assert "SFMNet C=8, 32x32" in capsys.readouterr().out
  result = json.loads(out.read_text())
  assert result["size"] == 32 and result["num_features"] == 8 and result["dtype"] == "float32"
  assert result["config"]["model"]["num_resblocks"] == 1  # the demo config's
  b1, b2 = result["rows"]
  assert (b1["name"], b2["name"]) == ("forward_b1", "forward_b2")
  assert all(len(row["times_s"]) == 2 for row in (b1, b2))
  # XLA's FLOP count is per call: twice the images, twice the FLOPs (to 1%).
  assert abs(b2["gflop_per_call"] / b1["gflop_per_call"] - 2) < 0.02
  assert result["machine"]["platform"] == jax.default_backend() and result["machine"]["device"]


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
