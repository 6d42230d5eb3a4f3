"""SFMNet-GAN x8 on Helen: starts from the PSNR-stage run of configs/helen_x8.py.

  python train.py --config=configs/helen_x8.py                    # PSNR stage first
  python train.py --config=configs/helen_x8_gan.py \
      --config.perceptual.weights=weights/vgg19-dcbb9e9d.pth
"""

from configs import default, helen_x8


def get_config():
  return default.gan_stage(helen_x8.get_config(), init_from="runs/helen_x8/checkpoints")
