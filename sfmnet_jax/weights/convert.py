r"""Converts the authors' released generator weights to an Orbax checkpoint.

  sfmnet-convert RELEASE.pth OUTPUT_DIR [--scale=8] [--step=0]

RELEASE is a PyTorch `.pth` state_dict (read without torch when it is in
PyTorch's zip format) or an `.npz` of its entries. OUTPUT_DIR becomes an
Orbax checkpoint directory (see `checkpoints.py`) that `evaluate.py
--checkpoint`, `sfmnet-infer` and GAN-stage training
(`--config.init_from`) read.
"""

import os
import sys

from sfmnet_jax import cli
from sfmnet_jax.weights import checkpoints
from sfmnet_jax.model.generator import count_params
from sfmnet_jax.weights.release import WeightFileError, load_release_weights


def convert(release_path: str, output_dir: str, scale=None, step: int = 0) -> str:
  """Writes `release_path`'s generator to `output_dir`; returns the step folder."""
  model, variables = load_release_weights(release_path)
  meta = {
      "model": checkpoints.model_meta(model),
      "scale": scale,
      "source": os.path.abspath(release_path),
      "kind": "converted_release",
      "num_params": count_params(variables),
  }
  mngr = checkpoints.manager(output_dir)
  if step in mngr.all_steps():
    raise FileExistsError(f"{output_dir} already holds a checkpoint at step {step}")
  checkpoints.save(mngr, step, {"generator": {"params": variables["params"]}}, meta)
  mngr.wait_until_finished()
  mngr.close()
  return os.path.join(os.path.abspath(output_dir), str(step))


def define_flags(fv):
  cli.flags.DEFINE_enum("scale", None, ["4", "8", "16"],
                        "Upscaling factor the weights were trained for (recorded).", flag_values=fv)
  cli.flags.DEFINE_integer("step", 0, "Step number to save under.", flag_values=fv)


def _main(fv, positional) -> int:
  if len(positional) != 2:
    raise cli.UsageError("give RELEASE (.pth or .npz) and OUTPUT_DIR")
  try:
    where = convert(positional[0], positional[1], int(fv.scale) if fv.scale else None, fv.step)
  except (FileNotFoundError, FileExistsError, WeightFileError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {where}")
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-convert")


if __name__ == "__main__":
  sys.exit(main())
