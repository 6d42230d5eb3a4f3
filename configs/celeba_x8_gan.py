"""SFMNet-GAN x8 on CelebA: starts from the PSNR-stage run of configs/celeba_x8.py.

  python train.py --config=configs/celeba_x8_gan.py \
      --config.perceptual.weights=weights/vgg19-dcbb9e9d.pth
"""

from configs import default, celeba_x8


def get_config():
  return default.gan_stage(celeba_x8.get_config(), init_from="runs/celeba_x8/checkpoints")
