"""`python -m sfmnet_jax.apps.benchmark COMMAND [flags]`: the `sfmnet-benchmark` command."""

import sys

from sfmnet_jax import runtime

if __name__ == "__main__":
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)
  from sfmnet_jax.apps.benchmark import main  # pylint: disable=g-import-not-at-top
  sys.exit(main())
