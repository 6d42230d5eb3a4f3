"""SFMNet x4 on CelebA (PSNR stage), DIC split as face folders.

  python train.py --config=configs/celeba_x4.py
"""

from configs import celeba_x8


def get_config():
  config = celeba_x8.get_config()
  config.data.scale = 4
  return config
