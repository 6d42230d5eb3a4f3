"""How fast is it here? Speed on this machine, printed and written as JSON by the
`sfmnet-benchmark` commands (`apps/benchmark/`): the generator and its train steps
(`model.py`), where a step's time goes (`profile.py`), the input pipeline (`input.py`), the
whole-photo pipeline (`photo.py`), dataset preparation on Beam (`prepare.py`), the ONNX
export on onnxruntime (`export.py`) and the release's PyTorch beside the port
(`versus_release.py`). Every time is `runtime.time_calls`'."""
