"""SFMNet x8 on Helen (PSNR stage), data in the release layout.

  python train.py --config=configs/helen_x8.py \
      --config.data.train_dir=datasets/Helen/train --config.data.test_dir=datasets/Helen/test
"""

from configs import default


def get_config():
  config = default.face_folders(default.get_config(), "datasets/Helen", scale=8)
  return config
