"""SFMNet exported to ONNX, run with onnxruntime: no JAX, no TensorFlow.

`OnnxGenerator("sfmnet.onnx")` is a callable like the JAX generator the photo
pipeline uses: (B, H, W, 3) float32 LR-up images in [0, 1] -> (img_out, img_fre),
numpy. It reads what the exporter recorded in the model's metadata (scale,
input size, architecture) and refuses ONNX files that are not an SFMNet
export, naming what is missing. Only numpy and onnxruntime are imported.
"""

import json
import os
from typing import Any, Dict

import numpy as np

INPUT = "lr_up"
OUTPUTS = ("img_out", "img_fre")
MARKER = "sfmnet_jax.export"  # metadata key every export carries (its value: the JSON record)
HOW_TO_GET = "pip install onnxruntime (or: pip install 'sfmnet-jax[onnx]')"


class NotAnSfmnetModel(ValueError):
  """An ONNX file that is not an SFMNet export (the message says what it lacks)."""


class OnnxRuntimeMissing(ImportError):
  """onnxruntime is not installed (the message says how to install it)."""


def _session(path: str, threads: int = 0):
  try:
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise OnnxRuntimeMissing(f"onnxruntime is not installed: {HOW_TO_GET}") from None
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  options.log_severity_level = 3
  try:
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # pylint: disable=broad-except  (onnxruntime raises its own kinds)
    raise NotAnSfmnetModel(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0]})") \
        from None


class OnnxGenerator:
  """An exported SFMNet on onnxruntime's CPU execution provider (see the module docstring)."""

  def __init__(self, path, threads: int = 0):
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"ONNX model not found: {path}")
    self.path = path
    self.session = _session(path, threads)
    meta = self.session.get_modelmeta().custom_metadata_map
    inputs = [i.name for i in self.session.get_inputs()]
    outputs = [o.name for o in self.session.get_outputs()]
    if MARKER not in meta or inputs != [INPUT] or tuple(outputs) != OUTPUTS:
      raise NotAnSfmnetModel(
          f"{path}: not an SFMNet export (inputs {inputs}, outputs {outputs}, "
          f"{'with' if MARKER in meta else 'without'} sfmnet_jax metadata; expected input "
          f"{INPUT!r}, outputs {list(OUTPUTS)}, as `sfmnet-export` writes)")
    self.info: Dict[str, Any] = json.loads(meta[MARKER])
    shape = self.session.get_inputs()[0].shape  # [batch or N, H, W, 3]
    self.batch = shape[0] if isinstance(shape[0], int) else None
    self.size = (int(shape[1]), int(shape[2]))
    self.scale = self.info.get("scale")

  def __call__(self, lr_up):
    """(B, H, W, 3) float32 in [0, 1] -> (img_out, img_fre), each (B, H, W, 3) float32."""
    x = np.ascontiguousarray(lr_up, np.float32)
    if x.ndim != 4 or x.shape[1:] != (*self.size, 3):
      raise ValueError(f"{self.path} takes (B, {self.size[0]}, {self.size[1]}, 3) images, "
                       f"got shape {x.shape}")
    if self.batch is not None and x.shape[0] != self.batch:
      raise ValueError(f"{self.path} was exported for batch {self.batch}, got {x.shape[0]}")
    out, fre = self.session.run(list(OUTPUTS), {INPUT: x})
    return out, fre

  def __repr__(self):
    return f"OnnxGenerator({self.path!r}, x{self.scale}, {self.size[0]}x{self.size[1]})"
