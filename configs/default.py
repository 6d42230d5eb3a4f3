"""The paper's PSNR-stage training setup (reference: "Data protocol"); variants override a few fields.

Not run directly: pick a variant, e.g.
  python train.py --config=configs/helen_x8.py
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.stage = "psnr"  # "psnr" | "gan"
  config.seed = 0
  config.dtype = "float32"  # computation dtype: "float32" | "bfloat16" (params stay float32)

  # Generator (the release: C=64, 2 ResBlocks per group, 8 heads, shared fusion attention).
  config.model = ml_collections.ConfigDict(dict(
      num_features=64, num_resblocks=2, num_heads=8, share_fusion_attention=True,
      remat=False,  # recompute blocks in the backward pass (less memory, slower)
      # "auto": the C++ kernels of sfmnet_jax/cpu on the CPU backend, XLA's ops on GPUs and
      # TPUs | "xla": XLA's ops everywhere (the release's numerics; see README "Numerics").
      conv_impl="auto",
      # The kernels' 3x3 convs: "auto" (Winograd outside the frequency branch) | "direct" |
      # "winograd" / "winograd4" (everywhere: its rounding can flip phases).
      conv_algorithm="auto",
      # The kernels' FreqBlock angle / sin / cos: "poly" (vectorised polynomials, a few 1e-7
      # from libm) | "xla" (XLA's libm calls; with conv_algorithm="direct", the release's).
      cpu_trig="poly",
      # The FreqBlocks' rfft2 / irfft2: "auto" (DFT matrix products on TPUs, which have no FFT
      # unit; FFTs elsewhere) | "fft" (the release's) | "dft" (float32 rounding from "fft").
      spectral_transform="auto"))

  config.data = ml_collections.ConfigDict(dict(
      source="folder",  # "demo" | "folder" (release layout) | "celeba" (tfds celeb_a)
      scale=8,  # 4 | 8 | 16
      train_dir=config_dict.placeholder(str),
      test_dir=config_dict.placeholder(str),
      tfds_data_dir=config_dict.placeholder(str),  # default ~/tensorflow_datasets
      resize_to_square=False,  # centre-crop + resize HR of other sizes to 128
      skip_unreadable=False,  # count and skip unreadable images instead of failing
      augment_flip=False,  # the release trains without augmentation
      patch_size=config_dict.placeholder(int),  # None: whole 128x128 faces (the release)
      demo_num_train=512, demo_num_test=32, demo_seed=0))

  config.batch_size = 8  # global, over all devices and processes
  config.eval_batch_size = 8
  config.num_epochs = 50
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, b1=0.9, b2=0.99, eps=1e-8, lr_decay_steps=(), lr_decay_factor=0.5,
      # Adam over one concatenated vector (optax.flatten): True | False | None (on CPUs).
      flatten=config_dict.placeholder(bool)))
  config.d_optimizer = ml_collections.ConfigDict(config.optimizer.to_dict())
  config.loss = ml_collections.ConfigDict(dict(
      freq_weight=0.01, perceptual_weight=0.1, adv_spatial_weight=0.0005,
      adv_frequency_weight=0.1))
  # GAN stage. The release detaches the SR features in its perceptual loss and the
  # fake-side logits of D_fre; the paper's objective does neither (the default).
  config.gan = ml_collections.ConfigDict(dict(
      release_perceptual_detach=False, release_dfre_detach=False, instance_noise=0.0))
  config.perceptual = ml_collections.ConfigDict(dict(
      network="vgg19",  # "vgg19" (the paper's) | "vgg16_lpips" (explicit stand-in)
      weights=config_dict.placeholder(str),  # torchvision vgg19 .pth/.npz, or "random"
      imagenet_norm=False))  # the release feeds [0, 1] images unnormalised
  config.ema_decay = 0.0  # > 0 keeps an EMA of the generator (evaluation uses it)
  config.init_from = ""  # generator weights to start from (GAN stage): checkpoint or release file
  config.init_from_ema = False

  config.log_every = 50
  config.max_steps_in_flight = 2  # steps dispatched ahead of the last completed one
  config.prefetch_batches = 2  # batches placed on the devices ahead of their step
  config.eval_every = 5000  # <= 0: no validation (not even at the end)
  config.eval_limit = -1  # > 0: validate on the first N test images only
  config.num_sample_images = 4
  config.checkpoint_every = 5000
  config.keep_checkpoints = 3

  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=1, process_id=0, cpu_collectives=""))
  return config


def face_folders(config, root: str, scale: int):
  """Points a config at `root/train` and `root/test` in the release layout, at `scale`."""
  config.data.scale = scale
  config.data.train_dir = f"{root}/train"
  config.data.test_dir = f"{root}/test"
  return config


def gan_stage(config, init_from: str):
  """The GAN-stage overrides of a PSNR-stage config: 10 epochs from its checkpoints."""
  config.stage = "gan"
  config.num_epochs = 10
  config.init_from = init_from
  config.perceptual.weights = "weights/vgg19-dcbb9e9d.pth"
  return config
