r"""Prepares a face dataset with TFDS (ArrayRecord), reporting what it holds.

  python -m sfmnet_jax.datasets demo   [--data_dir D] [--num_train 512 --num_test 32 --seed 0]
  python -m sfmnet_jax.datasets folder PATH --scale 8 [--resize_to_square] [--skip_unreadable]
  python -m sfmnet_jax.datasets celeba --data_dir D     # downloads CelebA (~1.4 GB)

Training and evaluation prepare demo and folder data themselves when needed;
CelebA is the one source that needs this step first (it downloads).
"""

import argparse
import os
import sys

import ml_collections

from sfmnet_jax.datasets import sources


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", choices=("demo", "folder", "celeba"))
  parser.add_argument("path", nargs="?", help="the face folder (source 'folder')")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--scale", type=int, default=8)
  parser.add_argument("--resize_to_square", action="store_true")
  parser.add_argument("--skip_unreadable", action="store_true")
  parser.add_argument("--num_train", type=int, default=512)
  parser.add_argument("--num_test", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cfg = ml_collections.ConfigDict({
      "source": args.source, "scale": args.scale, "tfds_data_dir": args.data_dir,
      "train_dir": args.path, "test_dir": None, "resize_to_square": args.resize_to_square,
      "skip_unreadable": args.skip_unreadable, "demo_num_train": args.num_train,
      "demo_num_test": args.num_test, "demo_seed": args.seed})
  try:
    if args.source == "celeba":
      data_dir = args.data_dir or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
      builder = sources.prepare_celeba(data_dir)
      print(f"prepared {builder.info.full_name} in {builder.data_dir}")
      return 0
    if args.source == "folder" and not args.path:
      parser.error("source 'folder' needs the folder's path")
    for split in (("train", "test") if args.source == "demo" else ("train",)):
      s = sources.get_split(cfg, split)
      print(f"{s.name}: {s.num_examples} faces in {s.builder.data_dir}"
            + (f", {len(s.skipped)} unreadable file(s) skipped" if s.skipped else ""))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
