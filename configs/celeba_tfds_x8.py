"""SFMNet x8 on tfds `celeb_a` (centred 178x178 square of the aligned faces, resized to 128).

Prepare CelebA once (downloads): sfmnet-datasets celeba --data_dir ~/tensorflow_datasets
  python train.py --config=configs/celeba_tfds_x8.py
Not the DIC split of the published numbers (tfds: 162,770 train / 19,962 test).
"""

from configs import celeba_x8


def get_config():
  config = celeba_x8.get_config()
  config.data.source = "celeba"
  config.data.train_dir = None
  config.data.test_dir = None
  return config
