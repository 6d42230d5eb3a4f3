"""sfmnet-benchmark photo [--checkpoint=runs/demo] [--detector=auto] [--repeats=3]

The whole-photo pipeline of `sfmnet-infer` on a 1-megapixel photo with five
small faces (the public-domain astronaut): detection, LR sampling and
super-resolution, and the paste-back, timed apart (medians of --repeats runs
after one that compiles the generator).
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common


def define_flags(fv, argv):
  del argv
  f = cli.flags
  f.DEFINE_string("checkpoint", "runs/demo", "The generator (anything evaluate.py takes).",
                  flag_values=fv)
  f.DEFINE_enum("detector", "auto", ["auto", "mtcnn", "dlib", "cnn", "hog"], "Face detector.",
                flag_values=fv)
  f.DEFINE_integer("repeats", 3, "Timed runs (median).", flag_values=fv)
  common.define_output(fv, "photo")


def run(fv):
  from sfmnet_jax.benchmarks import photo as photo_benchmark  # pylint: disable=g-import-not-at-top
  result = photo_benchmark.run(fv.checkpoint, detector=fv.detector, repeats=fv.repeats)
  common.write_json(result, "photo", fv.output)
  return result
