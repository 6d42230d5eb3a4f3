"""Weights from files: the authors' PyTorch release (`release.py`, read without torch by
`torch_pickle.py`), Orbax checkpoints of training runs and converted weights
(`checkpoints.py`, `convert.py`), and the perceptual loss's VGG (`vgg.py`)."""
