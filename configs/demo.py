"""The built-in demo: a small SFMNet on procedural faces, x4, a few minutes on a laptop CPU.

  python train.py                      # this config (workdir runs/demo)
  python train.py --config=configs/demo.py --config.num_train_steps=2000
Trains on random 64x64 patches of the faces (evaluates on whole faces) with a
higher learning rate than the paper's so that it beats bicubic quickly.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.num_features = 16
  config.model.num_resblocks = 1
  config.data.source = "demo"
  config.data.scale = 4
  config.data.patch_size = 64
  config.data.train_dir = None
  config.data.test_dir = None
  config.batch_size = 8
  config.num_train_steps = 300
  config.optimizer.learning_rate = 1e-3
  config.log_every = 10
  config.eval_every = 150
  config.checkpoint_every = 100
  config.num_sample_images = 3
  return config
