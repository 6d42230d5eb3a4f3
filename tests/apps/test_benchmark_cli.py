"""`sfmnet-benchmark`: every command answers --help with its own usage and flags, and every
invocation that README.md and docs/ show names a command and flags that its parser knows
(config fields included)."""

import pathlib
import re

import pytest
from absl import flags

from helpers import REPO
from sfmnet_jax.apps import benchmark, config_files

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_INVOCATION = re.compile(r"sfmnet-benchmark((?:\s+[a-z_]+(?:\s+\|\s+[a-z_]+)*)?)([^`\n#]*)")


def documented_invocations():
  """(file, command, flags, config file or None) of every `sfmnet-benchmark ...` in the
  documents (continuation lines joined; `a | b` lists several commands)."""
  found = []
  for path in DOCUMENTS:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for m in _INVOCATION.finditer(text):
      commands = [c.strip() for c in m.group(1).split("|") if c.strip()]
      rest = m.group(2)
      names = re.findall(r"(?<![\w-])--([\w.]+)", rest)
      config = re.search(r"--config=(\S+?\.py)", rest)
      for command in commands:
        found.append((path.name, command, names, config.group(1) if config else None))
  return found


def _parser(command):
  fv = flags.FlagValues()
  benchmark.command_module(command).define_flags(fv, ["sfmnet-benchmark"])
  return fv


def _config_has(config, dotted):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


def _load_config(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  config_files.make_importable()
  spec = importlib.util.spec_from_file_location("documented_config", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_every_command_answers_help_with_its_own_usage(capsys):
  assert benchmark.main(["--help"]) == 0
  overview = capsys.readouterr().out
  for command in benchmark.COMMANDS:
    assert f"  {command} " in overview
    assert benchmark.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"sfmnet-benchmark {command}" in out.splitlines()[0], (command, out[:300])
    assert "flags:" in out
  assert benchmark.main([]) == 2  # no command: the overview, and a usage error


def test_the_documented_invocations_use_known_commands_and_flags():
  invocations = documented_invocations()
  assert len(invocations) >= 20 and {c for _, c, _, _ in invocations} >= {
      "model", "compare", "aot", "twin", "faces", "export", "photo", "prepare", "input"}
  problems = []
  for document, command, names, config_file in invocations:
    if command not in benchmark.COMMANDS:
      problems.append(f"{document}: unknown command {command!r}")
      continue
    fv = _parser(command)
    config = None
    for name in names:
      if name.startswith("config."):
        if "config" not in fv:
          problems.append(f"{document}: {command} takes no --config ({name})")
          continue
        if name.split(".")[-1].isupper():  # a placeholder: --config.FIELD=VALUE
          continue
        if config is None:
          config = _load_config(config_file) if config_file and (REPO / config_file).exists() \
              else fv["config"].value
        if not _config_has(config, name[len("config."):]):
          problems.append(f"{document}: {command} --{name}: no such config field")
      elif name not in fv and not (name.startswith("no") and name[2:] in fv
                                   and isinstance(fv[name[2:]], flags.BooleanFlag)):
        problems.append(f"{document}: {command} has no flag --{name}")
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, want", [
    ("sfmnet-benchmark model --config.model.num_features=16 --repeats=3",
     [("model", ["config.model.num_features", "repeats"], None)]),
    ("`sfmnet-benchmark faces` composes", [("faces", [], None)]),
    ("sfmnet-benchmark input | photo   # several", [("input", [], None), ("photo", [], None)]),
    ("sfmnet-benchmark aot --config=configs/demo.py \\\n    [--find_max_batch]",
     [("aot", ["config", "find_max_batch"], "configs/demo.py")]),
])
def test_the_extraction_reads_what_documents_write(tmp_path, monkeypatch, text, want):
  (tmp_path / "x.md").write_text(text)
  monkeypatch.setattr(pathlib.Path, "read_text", lambda self: text)
  monkeypatch.setitem(globals(), "DOCUMENTS", [tmp_path / "x.md"])
  assert [(c, n, f) for _, c, n, f in documented_invocations()] == want


def test_the_check_can_fail():
  """A documented flag that no parser defines, or a config field that does not exist, fails."""
  with pytest.raises(AssertionError, match="has no flag --no_such_flag"):
    _check([("x.md", "model", ["no_such_flag"], None)])
  with pytest.raises(AssertionError, match="no such config field"):
    _check([("x.md", "model", ["config.model.no_such_field"], None)])


def _check(invocations):
  original = documented_invocations
  globals()["documented_invocations"] = lambda: invocations * 20 + [
      ("x.md", c, [], None) for c in benchmark.COMMANDS]
  try:
    test_the_documented_invocations_use_known_commands_and_flags()
  finally:
    globals()["documented_invocations"] = original
