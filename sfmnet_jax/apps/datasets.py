r"""Prepares face datasets: TFDS data for training, or aligned crops from raw photos.

  sfmnet-datasets demo   [--data_dir=D] [--num_train=512 --num_test=32 --seed=0]
  sfmnet-datasets folder PATH --scale=8 [--resize_to_square] [--skip_unreadable]
  sfmnet-datasets celeba --data_dir=D     # downloads CelebA (~1.4 GB)
  sfmnet-datasets prepare RAW_DIR OUT_DIR --convention=celeba [--list=FILES.txt]
      [--beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"]

Training and evaluation prepare demo and folder data themselves when needed;
CelebA is the one source that needs this step first (it downloads). `prepare`
detects, aligns and crops faces from raw photos into the release's folder
layout (see `sfmnet_jax/faces/prepare.py`).
"""

import sys

import ml_collections

from sfmnet_jax import cli

SOURCES = ("demo", "folder", "celeba", "prepare")


def define_flags(fv):
  f = cli.flags
  f.DEFINE_string("data_dir", None, "TFDS data dir (default ~/tensorflow_datasets).",
                  flag_values=fv)
  f.DEFINE_enum("scale", "8", ["4", "8", "16"], "Upscaling factor (folder).", flag_values=fv)
  f.DEFINE_bool("resize_to_square", False, "Centre-crop and resize HR of other sizes.",
                flag_values=fv)
  f.DEFINE_bool("skip_unreadable", False, "Skip unreadable images, counted.", flag_values=fv)
  f.DEFINE_integer("num_train", 512, "Demo faces for training.", flag_values=fv)
  f.DEFINE_integer("num_test", 32, "Demo faces for testing.", flag_values=fv)
  f.DEFINE_integer("seed", 0, "Demo seed.", flag_values=fv)
  f.DEFINE_string("convention", "celeba", "prepare: celeba, helen, dic (68 points: "
                  "non-commercial) or a JSON template file.", flag_values=fv)
  f.DEFINE_string("list", None, "prepare: a file of photo paths relative to RAW_DIR.",
                  flag_values=fv)
  f.DEFINE_string("partition", None, "prepare: keep list lines whose 2nd column equals this "
                  "(CelebA's list_eval_partition.txt: 0 train, 1 val, 2 test).", flag_values=fv)
  f.DEFINE_enum("detector", "auto", ["auto", "mtcnn", "dlib", "cnn", "hog"], "prepare: face detector.",
                flag_values=fv)
  f.DEFINE_integer("upsample", 1, "prepare: detector upsamplings.", flag_values=fv)
  f.DEFINE_float("min_score", None, "prepare: drop weaker detections.", flag_values=fv)
  f.DEFINE_float("min_crop_side", 64.0, "prepare: skip faces whose crop covers fewer photo "
                 "pixels.", flag_values=fv)
  f.DEFINE_bool("progress", True, "prepare: show a progress bar.", flag_values=fv)
  f.DEFINE_string("beam_pipeline_options", None, "prepare: run as an Apache Beam pipeline "
                  "with these options, comma-separated without dashes (TFDS's convention), "
                  "e.g. 'runner=DirectRunner,direct_num_workers=2,direct_running_mode="
                  "multi_processing'.", flag_values=fv)


def _prepare(fv, positional) -> int:
  from sfmnet_jax.faces import detection as face_detection  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.faces import prepare  # pylint: disable=g-import-not-at-top
  if len(positional) != 3:
    raise cli.UsageError("prepare needs RAW_DIR and OUT_DIR")
  try:
    counts = prepare.prepare(positional[1], positional[2], fv.convention, fv.list, fv.partition,
                             fv.detector, fv.upsample, fv.min_score, fv.min_crop_side,
                             fv.progress, fv.beam_pipeline_options)
  except (FileNotFoundError, ValueError, face_detection.ModelFileMissing) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(prepare.summary_line(counts, positional[2]))
  return 0


def _main(fv, positional) -> int:
  if not positional or positional[0] not in SOURCES:
    raise cli.UsageError(f"give one of {', '.join(SOURCES)}")
  source = positional[0]
  if source == "prepare":
    return _prepare(fv, positional)
  import os  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import sources  # pylint: disable=g-import-not-at-top
  path = positional[1] if len(positional) > 1 else None
  if source == "folder" and not path:
    raise cli.UsageError("source 'folder' needs the folder's path")
  cfg = ml_collections.ConfigDict({
      "source": source, "scale": int(fv.scale), "tfds_data_dir": fv.data_dir,
      "train_dir": path, "test_dir": None, "resize_to_square": fv.resize_to_square,
      "skip_unreadable": fv.skip_unreadable, "demo_num_train": fv.num_train,
      "demo_num_test": fv.num_test, "demo_seed": fv.seed})
  try:
    if source == "celeba":
      data_dir = fv.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
      builder = sources.prepare_celeba(data_dir)
      print(f"prepared {builder.info.full_name} in {builder.data_dir}")
      return 0
    for split in (("train", "test") if source == "demo" else ("train",)):
      s = sources.get_split(cfg, split)
      print(f"{s.name}: {s.num_examples} faces in {s.builder.data_dir}"
            + (f", {len(s.skipped)} unreadable file(s) skipped" if s.skipped else ""))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-datasets")


if __name__ == "__main__":
  sys.exit(main())
