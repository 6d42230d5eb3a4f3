r"""Reports the paper's metrics for a checkpoint: `python evaluate.py` evaluates the demo run.

  python evaluate.py                                   # runs/demo on the demo test faces
  python evaluate.py --config=configs/helen_x8.py --checkpoint=runs/helen_x8
  sfmnet-evaluate --config=configs/celeba_x8.py --checkpoint=SFMNet_x8.pth \
      --data_dir=datasets/CelebA/test --output_dir=reports/celeba_x8

--checkpoint takes a training workdir or its checkpoints/ (latest step, EMA
weights when present unless --noema), one step folder, a folder written by
`sfmnet-convert` or a release .pth/.npz; the generator's width and depth come
from it. Prints a Markdown table (PSNR, SSIM, LPIPS, identity, parameters,
time) beside the Bicubic row and writes report.md, metrics.json, the SR images
and a grid to --output_dir.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from sfmnet_jax import runtime
from sfmnet_jax.apps import config_files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", config_files.config_path("demo"),
                                "The training config: scale, data source, model width.",
                                lock_config=False)
flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ or a step folder, "
                    "a convert folder, or a release .pth/.npz (default: runs/<config name>).")
flags.DEFINE_string("data_dir", None, "A face folder in the release layout (default: the "
                    "config's test data).")
flags.DEFINE_string("output_dir", None, "Where the report goes (default: "
                    "runs/<config name>/eval).")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default: the config's).")
flags.DEFINE_bool("ema", True, "Use the EMA weights when the checkpoint has them.")
flags.DEFINE_bool("identity", True, "Compute identity similarity (dlib's ResNet, on the CPU).")
flags.DEFINE_integer("limit", None, "Evaluate the first N images only.")
flags.DEFINE_integer("num_grid", 6, "Faces in the side-by-side grid.")
flags.DEFINE_bool("round_y", True, "Round the Y channel to integers before PSNR/SSIM, as the "
                  "release's rgb2ycbcr does (--noround_y keeps it float).")
flags.DEFINE_string("align", None, "--data_dir holds unaligned photos: detect and align their "
                    "faces first with this convention (celeba, helen, dic).")
flags.DEFINE_integer("align_upsample", 1, "Detector upsamplings for --align.")
flags.DEFINE_string("compilation_cache", runtime.DEFAULT_CACHE_DIR,
                    "JAX's persistent compilation cache ('' turns it off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from sfmnet_jax.evaluation.report import evaluate_checkpoint  # pylint: disable=g-import-not-at-top
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
  runtime.enable_compilation_cache(FLAGS.compilation_cache)
  runtime.quiet_console_logs()
  checkpoint = FLAGS.checkpoint or os.path.join("runs", name)
  output_dir = FLAGS.output_dir or os.path.join("runs", name, "eval")
  try:
    report = evaluate_checkpoint(FLAGS.config, checkpoint, output_dir, data_dir=FLAGS.data_dir,
                                 batch_size=FLAGS.batch_size, use_ema=FLAGS.ema,
                                 identity=FLAGS.identity, num_grid=FLAGS.num_grid,
                                 limit=FLAGS.limit, round_y=FLAGS.round_y, align=FLAGS.align,
                                 align_upsample=FLAGS.align_upsample)
  except (FileNotFoundError, ValueError) as e:
    logging.error("%s", e)
    raise SystemExit(f"error: {e}") from None
  print(report["markdown"])
  print(f"\nwrote {output_dir}/report.md, metrics.json, grid.png and sr/*.png")


def run():
  """The `sfmnet-evaluate` console script and `python evaluate.py`."""
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)
  config_files.make_importable()
  app.run(main)


if __name__ == "__main__":
  run()
