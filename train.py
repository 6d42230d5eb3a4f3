r"""Trains SFMNet: `python train.py` runs the built-in demo; `--config` picks another setup.

  python train.py                                        # demo faces, a few minutes on a CPU
  python train.py --config=configs/helen_x8.py --config.batch_size=16
  python train.py --config=configs/celeba_x8.py --workdir=runs/my_celeba_run

The workdir defaults to runs/<config name>; started again in the same workdir,
training resumes from its latest checkpoint.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py"),
    "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go "
                    "(default: runs/<config file name>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data only: keep accelerators for JAX
  from sfmnet_jax.datasets.sources import DataNotFoundError  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config_path = config_flags.get_config_filename(FLAGS["config"])
  workdir = FLAGS.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  logging.info("Config %s, workdir %s", config_path, workdir)
  try:
    train_and_evaluate(FLAGS.config, workdir)
  except DataNotFoundError as e:
    logging.error("%s", e)
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
