"""SFMNet-GAN x4 on Helen: starts from the PSNR-stage run of configs/helen_x4.py.

  python train.py --config=configs/helen_x4_gan.py \
      --config.perceptual.weights=weights/vgg19-dcbb9e9d.pth
"""

from configs import helen_x8_gan


def get_config():
  config = helen_x8_gan.get_config()
  config.data.scale = 4
  config.init_from = "runs/helen_x4/checkpoints"
  return config
