"""Process set-up for SFMNet's entry points, JAX's compilation cache, and readable device names.

`prepare_process()` is what `train.py`, `evaluate.py` and the other entry
points call before JAX starts; importing `sfmnet_jax` itself changes nothing.
On a CPU-only host it applies the CPU plugin's process settings
(`sfmnet_jax.cpu.process`: XLA:CPU flags, huge pages, the large-block cache);
on a GPU or TPU host (`host.accelerator_host()`) it changes nothing and imports
nothing of the plugin. This is the plugin's process door (its one door for code
is `sfmnet_jax.cpu.accelerate`). Library users can call it before the first JAX
computation:

  from sfmnet_jax import runtime
  runtime.prepare_process()
"""

import importlib.metadata
import logging
import os
import platform
import time

from sfmnet_jax.host import accelerator_host, cpu_name, cpu_vector_extensions

__all__ = ["DEFAULT_CACHE_DIR", "cpu_name", "cpu_vector_extensions", "device_name",
           "enable_compilation_cache", "machine_info", "package_version", "prepare_process",
           "quiet_console_logs"]

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "xla")


def package_version(name: str):
  """The installed version of the distribution `name`, or None when it is not installed."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def prepare_process() -> None:
  """What every entry point runs first, before JAX starts (see the module docstring)."""
  if not accelerator_host():
    from sfmnet_jax.cpu import process  # pylint: disable=g-import-not-at-top
    process.prepare_process()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def time_calls(fn, repeats: int, warmup: int = 1, sync=None):
  """Seconds of each of `repeats` timed calls of `fn()`, after `warmup` untimed ones.

  `sync(result)` waits for a call's work to finish before its clock stops (default
  `jax.block_until_ready`; `lambda _: None` for a `fn` that blocks itself). The project's
  one timer: the benchmarks, the evaluation report and the release's timings use it.
  """
  if sync is None:
    import jax  # pylint: disable=g-import-not-at-top
    sync = jax.block_until_ready
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return times
