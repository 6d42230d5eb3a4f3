"""Where the configs are: `configs/` of a checkout, or the copy installed as `sfmnet_jax.configs`.

The config files import each other as `from configs import default` (the
layout of flax's examples). `make_importable()` lets them do so wherever the
package is installed: the name `configs` then refers to this directory.
"""

import importlib.util
import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_dir() -> str:
  """The installed `sfmnet_jax.configs`, else the checkout's `configs/` beside the package."""
  spec = importlib.util.find_spec("sfmnet_jax.configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  checkout = os.path.join(os.path.dirname(PACKAGE_DIR), "configs")
  if os.path.isfile(os.path.join(checkout, "default.py")):
    return checkout
  raise FileNotFoundError(f"no configs: neither sfmnet_jax.configs nor {checkout} exists")


def config_path(name: str) -> str:
  """The path of a config by name, e.g. "demo" -> .../configs/demo.py."""
  return os.path.join(config_dir(), f"{name}.py")


def make_importable() -> None:
  """Makes `import configs` the package of `config_dir()` (before a config file is loaded)."""
  directory = os.path.realpath(config_dir())
  current = sys.modules.get("configs")
  if current is not None and os.path.realpath(
      os.path.dirname(getattr(current, "__file__", "") or "")) == directory:
    return
  spec = importlib.util.find_spec("configs") if current is None else None
  if spec is not None and spec.origin and os.path.realpath(os.path.dirname(spec.origin)) == directory:
    return  # a checkout run from its root: `configs` is this directory already
  spec = importlib.util.spec_from_file_location(
      "configs", os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
  module = importlib.util.module_from_spec(spec)
  sys.modules["configs"] = module
  spec.loader.exec_module(module)
