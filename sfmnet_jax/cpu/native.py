"""Compiling this package's C++ sources with the machine's compiler (no JAX import).

`kernels` (the XLA FFI conv kernels) and `block_cache` (the large-block
allocator preloaded into the entry points) are built on first use into
`~/.cache/sfmnet_jax/`, keyed by their sources, and loaded from there after.
"""

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile


class BuildError(RuntimeError):
  """No compiler, or the compiler failed (the message names the command and its errors)."""


def compiler(environ=os.environ):
  """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on PATH (or None)."""
  if environ.get("CXX"):
    return shutil.which(environ["CXX"])
  return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


@functools.lru_cache(maxsize=None)
def is_gcc(cxx) -> bool:
  """Whether `cxx` (a path, or None) is GCC's C++ compiler (not clang)."""
  if not cxx:
    return False
  try:
    done = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False,
                          timeout=30)
  except OSError:
    return False
  text = done.stdout.lower()
  return "free software foundation" in text and "clang" not in text


def source_key(paths, *extra: str) -> str:
  """16 hex digits naming the contents of `paths` and the `extra` strings (flags, versions)."""
  key = hashlib.sha256()
  for name in paths:
    with open(name, "rb") as f:
      key.update(f.read())
  for part in extra:
    key.update(part.encode())
  return key.hexdigest()[:16]


def compile_library(sources, path: str, flags, environ=os.environ) -> str:
  """Compiles `sources` with `flags` into the shared library `path`, written atomically
  (concurrent builds are safe; a failed one leaves no file)."""
  cxx = compiler(environ)
  if cxx is None:
    raise BuildError("no C++ compiler found (set $CXX or install g++)")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  cmd = [cxx, *flags, *sources, "-o", tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
