"""SFMNet x8 on CelebA on a TPU pod slice of 16 chips (v5e-16, i.e. v5litepod-16; or v4-32):
multi-host, bfloat16, a global batch of 128 (8 faces per chip).

Fits per chip (its PSNR step: 4.17 GiB of a v5e's 16), compiled ahead of time without a
TPU (docs/aot.md; the per-chip program is the same on 4 chips as on 16):
  sfmnet-benchmark aot --target=tpu:v5e:2x2 --config=configs/celeba_x8_tpu_pod.py

Run the same command on every host of the pod:
  python train.py --config=configs/celeba_x8_tpu_pod.py --workdir=gs://BUCKET/runs/celeba_x8_pod \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
Data: tfds celeb_a prepared into that data dir (sfmnet-datasets celeba ...).
"""

from configs import celeba_tfds_x8


def get_config():
  config = celeba_tfds_x8.get_config()
  config.distributed.enabled = True  # jax.distributed.initialize() auto-detects the pod
  config.dtype = "bfloat16"
  config.batch_size = 128  # 16x the paper's 8: scale the learning rate by sqrt(16)
  config.eval_batch_size = 128
  config.optimizer.learning_rate = 4e-4
  config.log_every = 100
  config.eval_every = 2000
  config.checkpoint_every = 2000
  return config
