r"""Trains SFMNet: with no arguments, the built-in demo; `--config` picks another setup.

  python train.py                                        # demo faces, a few minutes on a CPU
  python train.py --config=configs/helen_x8.py --config.batch_size=16
  sfmnet-train --config=configs/celeba_x8.py --workdir=runs/my_celeba_run   # pip-installed

The workdir defaults to runs/<config name>; started again in the same workdir,
training resumes from its latest checkpoint. Compiled programs are cached in
--compilation_cache (default ~/.cache/sfmnet_jax/xla), so a second run skips
the compile. A SIGTERM'd run writes a checkpoint and exits with code 143.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from sfmnet_jax import runtime
from sfmnet_jax.apps import config_files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", config_files.config_path("demo"),
                                "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go "
                    "(default: runs/<config file name>).")
flags.DEFINE_string("compilation_cache", runtime.DEFAULT_CACHE_DIR,
                    "JAX's persistent compilation cache ('' turns it off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data only: keep accelerators for JAX
  from sfmnet_jax.data.sources import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training.loop import train_and_evaluate  # pylint: disable=g-import-not-at-top
  runtime.enable_compilation_cache(FLAGS.compilation_cache)
  config_path = config_flags.get_config_filename(FLAGS["config"])
  workdir = FLAGS.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  logging.info("Config %s, workdir %s", config_path, workdir)
  try:
    train_and_evaluate(FLAGS.config, workdir)
  except (DataNotFoundError, ValueError) as e:
    logging.error("%s", e)
    raise SystemExit(f"error: {e}") from None


def run():
  """The `sfmnet-train` console script and `python train.py`."""
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)
  config_files.make_importable()
  app.run(main)


if __name__ == "__main__":
  run()
