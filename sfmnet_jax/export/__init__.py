"""Deployment without JAX: SFMNet as ONNX (a converter and an export-only spectral seam) and
as a TensorFlow SavedModel, `sfmnet-export`, and the onnxruntime generator `sfmnet-infer
--model=` uses. `onnx_runtime` imports neither JAX nor TensorFlow."""
