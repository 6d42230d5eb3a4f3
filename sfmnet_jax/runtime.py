"""Process set-up for SFMNet's entry points, and a readable name for the device it runs on.

`prepare_process()` is what `train.py`, `evaluate.py` and the `python -m
sfmnet_jax.*` tools call before JAX starts; importing `sfmnet_jax` itself
changes nothing. Library users can call it (or its parts) themselves:

  from sfmnet_jax import runtime
  runtime.configure_xla_flags()      # before the first JAX computation

It does three things, each measured to leave the golden vector unchanged:

  1. `configure_xla_flags()` adds to `XLA_FLAGS`
     --xla_cpu_experimental_ynn_fusion_type=individual_dot
     which lowers dots and convolutions, including the kernel-gradient
     convolutions of the backward pass, to YNNPACK (3.2x faster kernel
     gradients for a 3x3 64->64 conv at 8x128x128 on a 2-core AVX2 CPU).
     A flag the user set in `XLA_FLAGS` wins; `SFMNET_XLA_FLAGS=0` turns it off.
     GPU and TPU backends ignore XLA:CPU flags.
  2. `apply_memory_settings()`: on Linux, re-executes the process once with
     - `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (where transparent huge pages
       are in `madvise` mode), so that XLA:CPU's buffers get 2 MiB pages. The
       backward pass transposes activations with a stride of one image per
       element; with 4 KiB pages every such read misses the TLB. A C=16
       training step took 4.6 s without and 3.5 s with it (same machine, same
       hour). `SFMNET_HUGEPAGES=0` turns it off.
     - `LD_PRELOAD` of the large-block cache (`block_cache.py`, glibc only):
       XLA:CPU's per-step temp buffer (1.3 GB for a C=16, batch-8 step) is
       kept resident between steps instead of being unmapped and faulted in
       again page by page (C=16 step on a 2-core AVX2 CPU: ~15-25% faster),
       at the cost of one more temp buffer resident between steps (at most an
       quarter of physical memory). `SFMNET_BLOCK_CACHE=0` turns it off.
  3. `enable_compilation_cache(path)`: JAX's persistent compilation cache, so
     that a second run skips the minutes XLA:CPU spends compiling a train step.
"""

import logging
import os
import platform
import sys

from sfmnet_jax import block_cache

CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "xla")


def configure_xla_flags(environ=os.environ) -> str:
  """Adds CPU_FLAGS to environ['XLA_FLAGS'] unless set there or disabled; returns the value."""
  current = environ.get("XLA_FLAGS", "")
  if environ.get("SFMNET_XLA_FLAGS", "1") == "0":
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
  and LD_PRELOAD for the large-block cache (built now if needed); {} when none."""
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
  """Re-executes this process with `memory_environment()` (once; see above)."""
  changes = memory_environment(environ)
  if not changes:
    return
  environ.update(changes)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, list(getattr(sys, "orig_argv", [sys.executable, *sys.argv])))


def enable_compilation_cache(path=DEFAULT_CACHE_DIR) -> None:
  """JAX's persistent compilation cache in `path` (None or "" leaves it off)."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def prepare_process() -> None:
  """What every entry point runs first, before JAX starts: memory settings, then XLA flags."""
  apply_memory_settings()
  configure_xla_flags()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def device_name() -> str:
  """E.g. 'NVIDIA H100 80GB HBM3', 'TPU v4', or the CPU model and its core count."""
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return f"{cpu_name()} ({os.cpu_count()} cores; {cpu_vector_extensions()})"
  return getattr(dev, "device_kind", str(dev))


def machine_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"device": device_name(), "platform": dev.platform, "cpu": cpu_name(),
          "cpu_vector_extensions": cpu_vector_extensions(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "device_count": jax.device_count(),
          "local_device_count": jax.local_device_count(), "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "jax": jax.__version__,
          "python": platform.python_version()}


class _QuietConsole(logging.Filter):
  """Drops Orbax's INFO records (option dumps of ~1,000 characters per save), clu's
  one-line dump of every hyperparameter and its echo of the train scalars (the console
  line says step, loss, steps/s and ETA; all of it is in TensorBoard and metrics.jsonl).
  Validation lines and warnings pass."""

  def filter(self, record):
    if record.levelno >= logging.WARNING:
      return True
    if "orbax" in record.pathname or str(record.msg).startswith("[Hyperparameters]"):
      return False
    return not (record.pathname.endswith("logging_writer.py")
                and "] train/" in record.getMessage())


def quiet_console_logs():
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    if not any(isinstance(f, _QuietConsole) for f in handler.filters):
      handler.addFilter(_QuietConsole())
