"""Where faces come from: the demo faces, face folders, or CelebA, as prepared TFDS splits.

`get_split(data_config, "train" | "test")` returns a `Split`: a prepared TFDS
dataset in ArrayRecord format (random access, so the input pipeline can
resume at any step) and how to turn a record into an HR (and LR) image.
Preparation is offline for the demo and folder sources; CelebA must be
prepared once beforehand (`sfmnet-datasets celeba`, which
downloads it), never implicitly.
"""

import dataclasses
import logging
import os
from typing import List, Optional

import tensorflow_datasets as tfds

from sfmnet_jax.data import degradation
from sfmnet_jax.data import demo_faces, face_folder

FILE_FORMAT = "array_record"
# CelebA's aligned images are 218x178 (HxW): the centred 178x178 square
# (rows 20..197), resized to 128x128 with PIL's bicubic, is our HR face.
CELEBA_BOX = (20, 0, 178)  # top, left, side
CELEBA_SPLITS = {"train": "train", "test": "test"}
HOW_TO_PREPARE = {
    "folder": ("point data.train_dir / data.test_dir at folders in the release layout "
               "(DIR/HR/*.png, 128x128, with optional DIR/LR_bicubic/ etc.), e.g. "
               "--config.data.test_dir=/path/to/Helen_test"),
    "celeba": ("prepare it once (downloads ~1.4 GB): sfmnet-datasets celeba "
               "--data_dir DIR, then pass --config.data.tfds_data_dir=DIR"),
}


class DataNotFoundError(FileNotFoundError):
  """The configured data is not there; the message says how to prepare it."""


@dataclasses.dataclass
class Split:
  """One prepared split: a TFDS builder, its split name, and how to read HR/LR from a record."""

  name: str
  builder: tfds.core.DatasetBuilder
  tfds_split: str
  image_key: str = "hr"
  has_lr: bool = False
  hr_box: Optional[tuple] = None  # (top, left, side) crop of the stored image before resizing
  skipped: List[dict] = dataclasses.field(default_factory=list)

  @property
  def num_examples(self) -> int:
    return self.builder.info.splits[self.tfds_split].num_examples

  def data_source(self):
    """Random-access records with images left encoded (decoded in the tf.data graph)."""
    decoders = {self.image_key: tfds.decode.SkipDecoding()}
    if self.has_lr:
      decoders["lr"] = tfds.decode.SkipDecoding()
    return self.builder.as_data_source(self.tfds_split, decoders=decoders)


def _data_dir(cfg) -> str:
  d = cfg.get("tfds_data_dir") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  return os.path.abspath(os.path.expanduser(d))


def prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Prepares `builder` if needed, offline (no GCS look-ups, no progress bars)."""
  if builder.is_prepared():
    return
  tfds.disable_progress_bar()
  logging.info("Preparing %s into %s", builder.info.full_name, builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _missing(cfg, what: str) -> DataNotFoundError:
  return DataNotFoundError(
      f"{what}. To use your data, {HOW_TO_PREPARE.get(cfg.source, '')}. "
      "`python train.py` with no arguments trains on the built-in demo faces instead.")


def _folder_split(cfg, split: str) -> Split:
  folder = cfg.get(f"{split}_dir")
  if not folder:
    raise _missing(cfg, f"data.source='folder' but data.{split}_dir is not set")
  try:
    config = face_folder.folder_config(folder, cfg.scale,
                                       resize_to_square=cfg.get("resize_to_square", False),
                                       skip_unreadable=cfg.get("skip_unreadable", False))
  except FileNotFoundError as e:
    raise _missing(cfg, f"data.{split}_dir: {e}") from None
  builder = face_folder.SfmnetFaceFolder(data_dir=_data_dir(cfg), config=config,
                                         file_format=FILE_FORMAT)
  if not builder.is_prepared():
    prepare(builder)
    face_folder.write_skipped(builder)
  skipped = face_folder.read_skipped(builder)
  if skipped:
    logging.warning("%s: skipped %d unreadable file(s) (listed in %s), e.g. %s", folder,
                    len(skipped), os.path.join(builder.data_dir, face_folder.SKIPPED_FILE),
                    skipped[0]["path"])
  return Split(f"folder:{config.folder}", builder, "images", has_lr=True, skipped=skipped)


def _demo_split(cfg, split: str) -> Split:
  config = demo_faces.demo_config(cfg.get("demo_num_train", 512), cfg.get("demo_num_test", 32),
                                  cfg.get("demo_seed", 0))
  builder = demo_faces.SfmnetDemoFaces(data_dir=_data_dir(cfg), config=config,
                                       file_format=FILE_FORMAT)
  prepare(builder)
  return Split(f"demo:{split}", builder, split)


def _celeba_split(cfg, split: str) -> Split:
  builder = tfds.builder("celeb_a", data_dir=_data_dir(cfg), file_format=FILE_FORMAT)
  if not builder.is_prepared():
    raise _missing(cfg, f"CelebA (tfds 'celeb_a', {FILE_FORMAT}) is not prepared in "
                   f"{_data_dir(cfg)}")
  return Split(f"celeba:{split}", builder, CELEBA_SPLITS[split], image_key="image",
               hr_box=CELEBA_BOX)


SOURCES = {"demo": _demo_split, "folder": _folder_split, "celeba": _celeba_split}


def get_split(cfg, split: str) -> Split:
  """The prepared `split` ('train' or 'test') of the source `cfg.source` describes."""
  degradation.check_scale(cfg.scale)
  if cfg.source not in SOURCES:
    raise ValueError(f"data.source must be one of {sorted(SOURCES)}, got {cfg.source!r}")
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  return SOURCES[cfg.source](cfg, split)


def prepare_celeba(data_dir: str) -> tfds.core.DatasetBuilder:
  """Downloads and prepares tfds 'celeb_a' in ArrayRecord format (the explicit, networked step)."""
  builder = tfds.builder("celeb_a", data_dir=data_dir, file_format=FILE_FORMAT)
  builder.download_and_prepare()
  return builder
