"""The package's layout: rooms whose imports go downward, no import cycles, one door into the
CPU plugin, no very long files.

Every cross-room import (module level or inside a function) must point to a
room of lower rank; within the package, module-level imports form no cycle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sfmnet_jax"

# Lowest first. The CPU plugin has two floors: its process settings run before JAX starts
# (below everything), its kernels intercept the model's layers (above the model).
ROOMS = [
    ("sfmnet_jax.cli", "sfmnet_jax.devices", "sfmnet_jax.host", "sfmnet_jax.cpu.process",
     "sfmnet_jax.cpu.native", "sfmnet_jax.cpu.block_cache"),
    ("sfmnet_jax.runtime",),
    ("sfmnet_jax.model",),
    ("sfmnet_jax.cpu",),
    ("sfmnet_jax.weights",),
    ("sfmnet_jax.data",),
    ("sfmnet_jax.faces",),
    ("sfmnet_jax.evaluation",),
    ("sfmnet_jax.export",),
    ("sfmnet_jax.training",),
    ("sfmnet_jax.accelerators",),
    ("sfmnet_jax.parity",),
    ("sfmnet_jax.benchmarks",),
    ("sfmnet_jax.apps",),
]
# A backstop, not a target: files are split where their meaning splits (about 400 lines is
# the hint); one class that is one piece may be longer.
MAX_LINES = 600


def _module_name(path):
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _resolve(module, package, node):
  if not node.level:
    return node.module or ""
  base = package.split(".")[:len(package.split(".")) - node.level + 1]
  return ".".join(base + ([node.module] if node.module else []))


def _is_module(name):
  path = PACKAGE.parent / name.replace(".", "/")
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path):
  """(imported module, at module level?) for each sfmnet_jax import in the file."""
  module = _module_name(path)
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  tree = ast.parse(path.read_text())
  top_level = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.ImportFrom):
      base = _resolve(module, package, node)
      for alias in node.names:
        full = f"{base}.{alias.name}"
        names.append(full if _is_module(full) else base)
    elif isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    found += [(n, id(node) in top_level) for n in names if n.startswith("sfmnet_jax")]
  return found


def _rank(module):
  best = None
  for rank, rooms in enumerate(ROOMS):
    for room in rooms:
      if module == room or module.startswith(room + "."):
        if best is None or len(room) > best[1]:
          best = (rank, len(room))
  return None if best is None else best[0]


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_room():
  homeless = [_module_name(p) for p in FILES
              if _rank(_module_name(p)) is None and _module_name(p) != "sfmnet_jax"]
  assert not homeless, f"modules outside the rooms: {homeless}"


def test_imports_go_downward():
  upward = []
  for path in FILES:
    module = _module_name(path)
    if module == "sfmnet_jax":  # the package's lazy exports
      continue
    for imported, _ in _imports(path):
      if imported == "sfmnet_jax":
        upward.append(f"{module} imports the top-level package")
        continue
      if _rank(imported) > _rank(module):
        upward.append(f"{module} -> {imported}")
  assert not upward, "imports going up: " + ", ".join(upward)


def test_no_import_cycles():
  graph = {}
  for path in FILES:
    graph[_module_name(path)] = {m for m, top in _imports(path) if top}
  state = {}

  def visit(node, stack):
    state[node] = "active"
    for nxt in graph.get(node, ()):
      if state.get(nxt) == "active":
        raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
      if nxt not in state:
        visit(nxt, stack + [node])
    state[node] = "done"

  for node in graph:
    if node not in state:
      visit(node, [])


def test_files_are_short():
  long = {str(p.relative_to(PACKAGE)): n for p in FILES
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f"files over {MAX_LINES} lines: {long}"


def test_one_door_into_the_cpu_plugin():
  """Outside `cpu/`, the package imports the plugin by its door only: the name `accelerate`
  of `sfmnet_jax.cpu`; and the process settings (before JAX starts) from `runtime.py` only."""
  seen = []
  for path in FILES:
    module = _module_name(path)
    if module.startswith("sfmnet_jax.cpu") or module == "sfmnet_jax":
      continue
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom):
        base = _resolve(module, package, node)
        if base == "sfmnet_jax" and any(a.name == "cpu" for a in node.names):
          seen.append(f"{module}: from sfmnet_jax import cpu")
        elif base == "sfmnet_jax.cpu":
          names = {a.name for a in node.names}
          if not (names == {"accelerate"} or (module == "sfmnet_jax.runtime"
                                              and names == {"process"})):
            seen.append(f"{module}: from sfmnet_jax.cpu import {sorted(names)}")
        elif base.startswith("sfmnet_jax.cpu."):
          seen.append(f"{module}: from {base} import ...")
      elif isinstance(node, ast.Import):
        seen += [f"{module}: import {a.name}" for a in node.names
                 if a.name.startswith("sfmnet_jax.cpu")]
  assert not seen, "imports past the plugin's door: " + "; ".join(seen)


def test_model_files_are_plain_flax():
  """The networks contain no custom gradients, platform switches, FFI or ctypes."""
  for path in (PACKAGE / "model").glob("*.py"):
    text = path.read_text()
    for word in ("custom_vjp", "custom_jvp", "platform_dependent", "ffi", "ctypes",
                 "sfmnet_jax.cpu", "from ..cpu", "onnx", "sfmnet_jax.export", "jax2tf"):
      assert word not in text, f"{path.name} mentions {word}"


@pytest.mark.parametrize("bad", ["upward", "cycle", "door"])
def test_the_checks_can_fail(tmp_path, monkeypatch, bad):
  """The checker itself finds a planted upward import, a planted cycle and an import past
  the CPU plugin's door."""
  package = tmp_path / "sfmnet_jax"
  for room in ("model", "training", "cpu"):
    (package / room).mkdir(parents=True)
    (package / room / "__init__.py").write_text("")
  (package / "__init__.py").write_text("")
  if bad == "upward":
    (package / "model" / "a.py").write_text("from ..training import b\n")
    (package / "training" / "b.py").write_text("x = 1\n")
  elif bad == "door":
    (package / "cpu" / "init.py").write_text("x = 1\n")
    (package / "training" / "b.py").write_text("from sfmnet_jax.cpu.init import x\n")
  else:
    (package / "model" / "a.py").write_text("from . import b\n")
    (package / "model" / "b.py").write_text("from . import a\n")
  monkeypatch.setitem(globals(), "PACKAGE", package)
  monkeypatch.setitem(globals(), "FILES", sorted(package.rglob("*.py")))
  check = {"upward": test_imports_go_downward, "cycle": test_no_import_cycles,
           "door": test_one_door_into_the_cpu_plugin}[bad]
  with pytest.raises(AssertionError):
    check()
