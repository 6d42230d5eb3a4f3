"""Faces in ordinary photos: detection (dlib, `detection.py`), alignment into the
training crop convention (`alignment.py`), whole-photo restoration (`photo.py`) and
datasets prepared from raw photos (`prepare.py`)."""
