"""sfmnet-benchmark input [--scale=8] [--batch_size=8] [--batches=300] [--data_dir=DIR]

tf.data throughput of 128x128 training batches on 256 demo faces (prepared once
into --data_dir, default a temporary folder), after 10 untimed batches.
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common


def define_flags(fv, argv):
  del argv
  f = cli.flags
  f.DEFINE_enum("scale", "8", ["4", "8", "16"], "Upscaling factor.", flag_values=fv)
  f.DEFINE_integer("batch_size", 8, "Batch size.", flag_values=fv)
  f.DEFINE_integer("batches", 300, "Batches to time.", flag_values=fv)
  f.DEFINE_string("data_dir", None, "TFDS data dir for the demo faces.", flag_values=fv)
  common.define_output(fv, "input_x<scale>")


def run(fv):
  from sfmnet_jax.benchmarks import input as input_benchmark  # pylint: disable=g-import-not-at-top
  result = input_benchmark.run(int(fv.scale), fv.batch_size, fv.batches, fv.data_dir)
  common.write_json(result, f"input_x{fv.scale}", fv.output)
  return result
