r"""Trains SFMNet: `python train.py` runs the built-in demo; `--config` picks another setup.

  python train.py                                        # demo faces, a few minutes on a CPU
  python train.py --config=configs/helen_x8.py --config.batch_size=16
  python train.py --config=configs/celeba_x8.py --workdir=runs/my_celeba_run

Flags: --config (a configs/*.py file; any field by --config.FIELD=VALUE), --workdir
(default runs/<config name>; a run started again there resumes), --compilation_cache.
The flags and `main` are `sfmnet_jax/apps/train.py` (also the `sfmnet-train` command),
which calls `sfmnet_jax.training.train_and_evaluate(config, workdir)`.
"""

from sfmnet_jax.apps import train

if __name__ == "__main__":
  train.run()
