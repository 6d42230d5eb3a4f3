r"""Trains SFMNet: `python train.py` runs the built-in demo; `--config` picks another setup.

  python train.py                                        # demo faces, a few minutes on a CPU
  python train.py --config=configs/helen_x8.py --config.batch_size=16
  python train.py --config=configs/celeba_x8.py --workdir=runs/my_celeba_run

The workdir defaults to runs/<config name>; started again in the same workdir,
training resumes from its latest checkpoint. Compiled programs are cached in
--compilation_cache (default ~/.cache/sfmnet_jax/xla), so a second run skips
the compile. A SIGTERM'd run writes a checkpoint and exits with code 143.
"""

from sfmnet_jax import runtime

runtime.prepare_process()  # before JAX starts: memory settings, XLA flags (see runtime.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
import os  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py"),
    "Training configuration (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and samples go "
                    "(default: runs/<config file name>).")
flags.DEFINE_string("compilation_cache", runtime.DEFAULT_CACHE_DIR,
                    "JAX's persistent compilation cache ('' turns it off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only: keep accelerators for JAX
  from sfmnet_jax.datasets.sources import DataNotFoundError
  from sfmnet_jax.training import train_and_evaluate
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


if __name__ == "__main__":
  app.run(main)
