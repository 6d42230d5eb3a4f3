"""What this host is: its CPU, and whether JAX may run on a GPU or TPU here.

No JAX is imported: `accelerator_host()` decides, before JAX starts, whether the
CPU plugin's process settings apply (`runtime.prepare_process`) and whether its
kernels may be imported at all.
"""

import glob
import importlib.metadata
import importlib.util
import os
import platform

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
