"""sfmnet-benchmark prepare [--photos=240] [--beam_pipeline_options=...] [--beam_workers=2]
                         [--detector=auto] [--work_dir=DIR]

Photos per second of `sfmnet-datasets prepare` in one process and on Apache
Beam (default: the DirectRunner with 2 worker processes) on the same raw photos
(the astronaut placed anew in each), that both wrote the same PNGs and
decisions, and the estimated time of CelebA and Helen on N workers.
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common


def define_flags(fv, argv):
  del argv
  f = cli.flags
  f.DEFINE_integer("photos", 240, "Raw photos to make and prepare.", flag_values=fv)
  f.DEFINE_string("beam_pipeline_options", "runner=DirectRunner,direct_num_workers=2,"
                  "direct_running_mode=multi_processing", "Beam's options.", flag_values=fv)
  f.DEFINE_integer("beam_workers", 2, "The workers those options give (for the per-worker "
                   "rate).", flag_values=fv)
  f.DEFINE_enum("detector", "auto", ["auto", "mtcnn", "dlib", "cnn", "hog"], "Face detector.",
                flag_values=fv)
  f.DEFINE_string("work_dir", None, "Where the photos and outputs go (default a new temporary "
                  "folder).", flag_values=fv)
  common.define_output(fv, "prepare")


def run(fv):
  from sfmnet_jax.benchmarks import prepare as prepare_benchmark  # pylint: disable=g-import-not-at-top
  result = prepare_benchmark.run(fv.photos, fv.beam_pipeline_options, fv.beam_workers,
                                 detector=fv.detector, work_dir=fv.work_dir)
  common.write_json(result, "prepare", fv.output)
  return result
