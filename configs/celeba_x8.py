"""SFMNet x8 on CelebA (PSNR stage): the DIC split (168,854 train / 1,000 test) as face folders.

  python train.py --config=configs/celeba_x8.py \
      --config.data.train_dir=datasets/CelebA/train --config.data.test_dir=datasets/CelebA/test
"""

from configs import default


def get_config():
  config = default.face_folders(default.get_config(), "datasets/CelebA", scale=8)
  config.eval_limit = 200  # validate on 200 of the 1,000 test faces while training
  return config
