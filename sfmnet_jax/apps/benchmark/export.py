r"""sfmnet-benchmark export [--release_dir=PATH/TO/SFMNet] [--widths=16,64] [--batch_sizes=1,8]
                        [--repeats=5] [--rounds=1]

The exported ONNX model on onnxruntime (in a child process without JAX, as
`sfmnet-infer --model` runs it) beside the port's JAX forward (CPU plugin and
exact mode) and, with --release_dir, the release's PyTorch forward, per width
(random weights) and batch size, at 128x128: seconds per forward and the
ratios onnxruntime / fastest JAX (the deployment goal: at most 1.5) and
release / onnxruntime.
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common
from sfmnet_jax.parity.checkout import ReleaseUnavailable

ERRORS = (ReleaseUnavailable,)


def define_flags(fv, argv):
  del argv
  f = cli.flags
  f.DEFINE_string("release_dir", None, "A checkout of github.com/wcy-cs/SFMNet (optional).",
                  flag_values=fv)
  f.DEFINE_list("widths", ["16", "64"], "Generator widths.", flag_values=fv)
  f.DEFINE_list("batch_sizes", ["1", "8"], "Forward batch sizes.", flag_values=fv)
  f.DEFINE_integer("repeats", 5, "Timed calls per figure (median).", flag_values=fv)
  f.DEFINE_integer("rounds", 1, "Turns of the backends; medians over them.", flag_values=fv)
  common.define_output(fv, "export_<platform>")


def run(fv):
  from sfmnet_jax.benchmarks import export as export_benchmark  # pylint: disable=g-import-not-at-top
  result = export_benchmark.run(fv.release_dir, common.int_list(fv, "widths"),
                                common.int_list(fv, "batch_sizes"), fv.repeats, fv.rounds)
  common.write_json(result, f"export_{result['machine']['platform']}", fv.output)
  return result
