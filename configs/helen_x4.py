"""SFMNet x4 on Helen (PSNR stage), data in the release layout.

  python train.py --config=configs/helen_x4.py
"""

from configs import helen_x8


def get_config():
  config = helen_x8.get_config()
  config.data.scale = 4
  return config
