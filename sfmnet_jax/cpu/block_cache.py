"""A cache of large memory blocks for XLA:CPU, preloaded into the entry points (no JAX import).

XLA:CPU allocates each run's temporary buffer (gigabytes for an SFMNet train
step) and frees it when the run ends. glibc serves such blocks with a fresh
`mmap` and returns them with `munmap`, so every step faults all of that memory
in again while the kernel zeroes it page by page (docs/cpu_plugin.md).
`csrc/block_cache.cc`, loaded with `LD_PRELOAD`, serves aligned allocations
(`posix_memalign`, `aligned_alloc`, `memalign`) of at least
`SFMNET_BLOCK_CACHE_MIN_MB` (32) from one reserved address range, in 2 MiB
units (transparent huge pages unless `SFMNET_HUGEPAGES=0`), and keeps freed
blocks resident for the next request of a similar size. Resident memory stays
within the most the process ever had live at once: freed blocks are returned
to the kernel, oldest first, beyond that and beyond
`SFMNET_BLOCK_CACHE_KEEP_MB` (default: a quarter of physical memory). A train loop needs two: the next step allocates its
buffer before the previous one's is freed. Everything else goes to the next
allocator (glibc's, or one preloaded after this library).

`runtime.prepare_process()` builds it (`~/.cache/sfmnet_jax/native/`, with
the machine's C++ compiler) and re-executes the process with it preloaded, on
Linux with glibc; `SFMNET_BLOCK_CACHE=0` turns it off. The library removes
itself from `LD_PRELOAD` as it loads, so child processes (compilers, browsers,
the release in `benchmark compare`) do not inherit it.
"""

import ctypes
import logging
import os
import platform

from sfmnet_jax.cpu import native

SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "block_cache.cc")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "native")
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-w")
STATS = ("requests", "reused", "fresh", "evicted", "fallbacks", "live_bytes", "warm_bytes",
         "peak_bytes", "keep_bytes")


def enabled(environ=os.environ) -> bool:
  """On Linux with glibc (the library replaces glibc's aligned allocation entry points),
  unless SFMNET_BLOCK_CACHE=0."""
  return (environ.get("SFMNET_BLOCK_CACHE", "1") != "0" and platform.system() == "Linux"
          and platform.libc_ver()[0] == "glibc")


def library_path(cache_dir=CACHE_DIR) -> str:
  key = native.source_key((SOURCE,), " ".join(FLAGS), platform.machine())
  return os.path.join(cache_dir, f"sfmnet_block_cache_{key}.so")


def ensure_built(cache_dir=CACHE_DIR):
  """The library's path, built now if needed; None (logged) where it cannot be built."""
  path = library_path(cache_dir)
  if not os.path.exists(path):
    try:
      native.compile_library((SOURCE,), path, (*FLAGS, "-ldl"))
    except native.BuildError as e:
      logging.warning("No large-block cache (XLA's buffers are faulted in every step): %s", e)
      return None
  return path


def _stats_function():
  try:
    fn = ctypes.CDLL(None).sfmnet_block_cache_stats
  except AttributeError:
    return None
  fn.argtypes = [ctypes.POINTER(ctypes.c_ulong)]
  fn.restype = None
  return fn


def loaded() -> bool:
  """Whether this process runs with the cache preloaded."""
  return _stats_function() is not None


def stats():
  """The cache's counters (STATS: requests served, reused warm blocks, fresh ones, evicted
  ones, fallbacks to the next allocator; live, warm and peak bytes; the limit on warm
  bytes), or None where it is not loaded."""
  fn = _stats_function()
  if fn is None:
    return None
  out = (ctypes.c_ulong * len(STATS))()
  fn(out)
  return dict(zip(STATS, out))


def preload_value(path: str, environ=os.environ):
  """LD_PRELOAD with `path` in front, or None when `path` is listed there already: a
  preload that was asked for and did not load cannot make the process re-execute forever."""
  current = environ.get("LD_PRELOAD", "")
  if path in current.replace(":", " ").split():
    return None
  return f"{path} {current}".strip()
