"""Benchmarks that print numbers and write JSON (`sfmnet-benchmark`, or
`sfmnet-benchmark`): the model and its steps (`model.py`, with XLA's cost analysis and
roofline estimates in `roofline.py`), the release beside the port (`release.py`), where
a step's time goes (`profile.py`) and the whole-photo pipeline (`photo.py`)."""
