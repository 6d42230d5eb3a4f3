"""What the benchmark commands share: the one JSON writer and the training-config flag."""

import json
import os

from sfmnet_jax import cli

BENCHMARK_DIR = "benchmark_results"


def write_json(result: dict, name: str, output=None) -> str:
  """Writes `result` to `output` (default benchmark_results/<name>.json), atomically; returns
  the path."""
  path = output or os.path.join(BENCHMARK_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)
  print(f"wrote {path}")
  return path


def define_output(fv, name_hint: str) -> None:
  cli.flags.DEFINE_string("output", None, f"JSON path (default {BENCHMARK_DIR}/{name_hint}.json).",
                          flag_values=fv)


def define_config(fv, argv, default: str, help_text: str = "") -> None:
  """`--config=configs/X.py` (default configs/<default>.py) with `--config.FIELD=VALUE`
  overrides, as train.py takes it (ml_collections' config_flags; `argv` names the
  overrides to define)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.apps import config_files  # pylint: disable=g-import-not-at-top
  config_files.make_importable()
  config_flags.DEFINE_config_file(
      "config", config_files.config_path(default),
      help_text or "A training configuration (configs/*.py); any field by --config.FIELD=VALUE.",
      flag_values=fv, lock_config=True, sys_argv=list(argv))


def config_name(fv) -> str:
  """The config file's name without its folder and .py (for result names)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  return os.path.splitext(os.path.basename(config_flags.get_config_filename(fv["config"])))[0]


def int_list(fv, name: str):
  """A list flag's values as integers (a cli.UsageError naming the flag otherwise)."""
  try:
    return [int(v) for v in fv[name].value]
  except ValueError:
    raise cli.UsageError(f"--{name} takes integers, got {fv[name].value}") from None
