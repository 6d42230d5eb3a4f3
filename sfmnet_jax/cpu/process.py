"""Process settings for XLA:CPU, applied before JAX starts (no JAX import here).

`prepare_process()` (what `sfmnet_jax.runtime.prepare_process()` runs for the
entry points) does, on a CPU-only host:

  1. `configure_xla_flags()`: adds to `XLA_FLAGS`
     --xla_cpu_experimental_ynn_fusion_type=individual_dot
     which lowers XLA:CPU's dots and convolutions to YNNPACK. A flag the user
     set in `XLA_FLAGS` wins; `SFMNET_XLA_FLAGS=0` turns it off.
  2. `apply_memory_settings()`: on Linux with glibc, re-executes the process
     once with
     - `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (where transparent huge pages
       are in `madvise` mode), so that XLA:CPU's buffers get 2 MiB pages
       (`SFMNET_HUGEPAGES=0` turns it off);
     - `LD_PRELOAD` of the large-block cache (`block_cache.py`), which keeps
       XLA:CPU's per-step temp buffer resident between steps instead of
       letting glibc unmap it (`SFMNET_BLOCK_CACHE=0` turns it off).

On an accelerator host none of this happens (`accelerator_host()`): when
`JAX_PLATFORMS` names a platform other than the CPU, or, with `JAX_PLATFORMS`
unset, when a JAX GPU or TPU plugin is installed. `JAX_PLATFORMS=cpu` on such
a host asks for a CPU run, and gets the CPU settings.
"""

import importlib.util
import os
import platform
import sys

from sfmnet_jax.cpu import block_cache
from sfmnet_jax.host import accelerator_host

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
def configure_xla_flags(environ=os.environ) -> str:
  """Adds CPU_FLAGS to environ['XLA_FLAGS'] unless set there, disabled or on an accelerator
  host; returns the value."""
  current = environ.get("XLA_FLAGS", "")
  if environ.get("SFMNET_XLA_FLAGS", "1") == "0" or accelerator_host(environ):
    return current
  extra = [f"--{k}={v}" for k, v in CPU_FLAGS.items() if f"--{k}=" not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
  return environ.get("XLA_FLAGS", "")


def _thp_mode() -> str:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def _glibc_at_least(major_minor) -> bool:
  lib, version = platform.libc_ver()
  try:
    return lib == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= major_minor
  except ValueError:
    return False


def malloc_tunables(environ=os.environ):
  """The GLIBC_TUNABLES value that asks malloc for huge pages, or None when nothing is needed
  or possible (a hugetlb tunable the user set, or this process before re-executing, wins)."""
  if platform.system() != "Linux":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if (environ.get("SFMNET_HUGEPAGES", "1") == "0" or _thp_mode() != "madvise"
      or not _glibc_at_least((2, 35)) or "glibc.malloc.hugetlb=" in current):
    return None  # not needed where the kernel gives huge pages unasked
  return f"{current}:{HUGEPAGE_TUNABLE}" if current else HUGEPAGE_TUNABLE


def memory_environment(environ=os.environ) -> dict:
  """The environment variables to change before JAX starts: GLIBC_TUNABLES for huge pages
  and LD_PRELOAD for the large-block cache (built now if needed); {} when none, and
  always {} on an accelerator host."""
  if accelerator_host(environ):
    return {}
  changes = {}
  tunables = malloc_tunables(environ)
  if tunables is not None:
    changes["GLIBC_TUNABLES"] = tunables
  if block_cache.enabled(environ) and not block_cache.loaded():  # not after re-executing
    path = block_cache.ensure_built()
    preload = path and block_cache.preload_value(path, environ)
    if preload:
      changes["LD_PRELOAD"] = preload
  return changes


def apply_memory_settings(environ=os.environ) -> None:
  """Re-executes this process with `memory_environment()` (once; nothing to change: no-op)."""
  changes = memory_environment(environ)
  if not changes:
    return
  environ.update(changes)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))


def prepare_process(environ=os.environ) -> None:
  """Memory settings (may re-execute), then XLA flags; nothing on an accelerator host, nor
  where JAX is not installed (an ONNX-only deployment)."""
  if importlib.util.find_spec("jax") is None:
    return
  apply_memory_settings(environ)
  configure_xla_flags(environ)
