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

import glob
import importlib.metadata
import importlib.util
import os
import platform
import sys

from sfmnet_jax.cpu import block_cache

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
# Distributions that give JAX a GPU or TPU backend (PJRT plugins, libtpu), by name prefix.
ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu",
                             "jax-metal", "jax-tpu")


def installed_accelerator_plugins():
  """Names of installed distributions that give JAX a GPU or TPU backend."""
  found = set()
  for dist in importlib.metadata.distributions():
    name = (dist.metadata.get("Name") or "").lower()
    if name.startswith(ACCELERATOR_DISTRIBUTIONS):
      found.add(name)
  for ep in importlib.metadata.entry_points(group="jax_plugins"):
    found.add(f"jax_plugins:{ep.name}")
  if importlib.util.find_spec("libtpu") is not None:
    found.add("libtpu")
  return sorted(found)


def tpu_chips_present() -> bool:
  """Whether this machine has TPU chips (a TPU VM's /dev/accel* or /dev/vfio devices)."""
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def accelerator_host(environ=os.environ, plugins=None) -> bool:
  """Whether JAX may run on a GPU or TPU here, so that no CPU setting may apply.

  `JAX_PLATFORMS` decides when it is set (any platform but "cpu" in it: yes);
  otherwise any installed GPU or TPU plugin (`plugins`, default: looked up). libtpu
  counts only beside TPU chips: installed for compiling ahead of time
  (`sfmnet-benchmark aot`), it makes no CPU host a TPU host.
  """
  requested = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if requested:
    return any(p != "cpu" for p in requested)
  plugins = installed_accelerator_plugins() if plugins is None else plugins
  if not tpu_chips_present():
    plugins = [p for p in plugins if p != "libtpu"]
  return bool(plugins)


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


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_vector_extensions() -> str:
  """The SIMD extensions the CPU reports (e.g. 'avx2 fma'), the part that sets XLA:CPU's speed."""
  wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni",
            "amx_bf16", "asimd", "sve")
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          have = set(line.split(":", 1)[1].split())
          return " ".join(w for w in wanted if w in have)
  except OSError:
    pass
  return ""
