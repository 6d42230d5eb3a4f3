"""Face data: the PIL-exact bicubic resize (`resize.py`), the release's LR/LR-up
(`degradation.py`), image reading and writing (`image_io.py`, `visualize.py`), the
datasets (`sources.py`: face folders, tfds CelebA, the procedural demo faces) and the
resumable tf.data pipeline (`pipeline.py`)."""
