"""The authors' release beside this package: where its checkout is, and torch to run it.

None of the release's code is in this repository: a checkout of
github.com/wcy-cs/SFMNet is imported from where the user cloned it.
"""

import importlib
import os
import sys

HOW_TO_GET = (
    "The comparison runs the authors' PyTorch code: install torch and einops "
    "(pip install torch einops; on this project's machines `pip install torch==2.13.0` takes a "
    "local CPU wheel) and clone the release: git clone https://github.com/wcy-cs/SFMNet, then "
    "pass --release_dir=PATH/TO/SFMNet.")
REQUIRED = (os.path.join("models", "mynet.py"), os.path.join("models", "common.py"),
            "main_two.py")


class ReleaseUnavailable(RuntimeError):
  """The release or what runs it is missing or failed (the message says what to get or
  pass)."""


def release_checkout(release_dir) -> str:
  """The absolute path of a release checkout, or ReleaseUnavailable naming what is missing."""
  missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(release_dir or "", f))]
  if not release_dir or missing:
    raise ReleaseUnavailable(f"no release checkout at {release_dir!r} ({', '.join(missing)} "
                             f"missing). {HOW_TO_GET}")
  return os.path.abspath(release_dir)


def load_release_generator(release_dir: str):
  """The release's `TwoBranch` class (models/mynet.py) and torch, in this process."""
  path = release_checkout(release_dir)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import einops  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ReleaseUnavailable(f"{e.name or 'torch'} is not installed. {HOW_TO_GET}") from None
  if path not in sys.path:
    sys.path.insert(0, path)
  return importlib.import_module("models.mynet").TwoBranch, torch
