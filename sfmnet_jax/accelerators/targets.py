"""The compile-only devices of a TPU topology or a GPU description, on a host without them.

A TPU topology comes from libtpu (`pip install sfmnet-jax[aot]`, or a folder
named by SFMNET_LIBTPU_DIR) through `jax.experimental.topologies`; a GPU from
the CUDA plugin (`jax-cuda12-plugin`) with a target description file from
`gpu_specs/`. libtpu is set up when a TPU target is asked for: the host's own
backend stays the CPU, and libtpu asks no metadata server (none exists off a
TPU VM).
"""

import importlib.util
import os
from typing import Optional

GPU_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")
DEFAULT_LIBTPU_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "libtpu")
LIBTPU_ENVIRONMENT = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_STDERR_LOG_LEVEL": "3",  # libtpu's start-up warnings about the VM
    "TPU_MIN_LOG_LEVEL": "3",
    # Compile-only: several processes may load libtpu at once (its lockfile guards TPU
    # chips, none of which are used here).
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


class TargetUnavailable(RuntimeError):
  """The target's compiler is not installed here (the message says how to get it)."""


def find_libtpu() -> Optional[str]:
  """Path of libtpu.so: $TPU_LIBRARY_PATH, the installed `libtpu` package, or
  $SFMNET_LIBTPU_DIR (default ~/.cache/sfmnet_jax/libtpu, where .ci/run puts it)."""
  if os.environ.get("TPU_LIBRARY_PATH"):
    return os.environ["TPU_LIBRARY_PATH"]
  spec = importlib.util.find_spec("libtpu")
  folders = [os.path.dirname(spec.origin)] if spec and spec.origin else []
  folders.append(os.path.join(os.environ.get("SFMNET_LIBTPU_DIR", DEFAULT_LIBTPU_DIR), "libtpu"))
  for folder in folders:
    path = os.path.join(folder, "libtpu.so")
    if os.path.exists(path):
      return path
  return None


def _host_stays_cpu():
  """JAX's own backend stays the CPU (unless JAX_PLATFORMS says otherwise): the target's
  devices are compile-only, and a GPU or TPU plugin installed here must not start."""
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_platforms:
    jax.config.update("jax_platforms", "cpu")


def use_libtpu(environ=os.environ) -> str:
  """Sets libtpu up for compiling only (LIBTPU_ENVIRONMENT, its path); returns its path.
  JAX may be imported already, but no TPU client may have been made (libtpu reads these
  variables when it loads)."""
  path = find_libtpu()
  if path is None:
    raise TargetUnavailable(
        "libtpu is not installed: pip install 'sfmnet-jax[aot]' (or pip install "
        f"libtpu==0.0.42 --target {DEFAULT_LIBTPU_DIR}); nothing is downloaded at run time")
  for key, value in LIBTPU_ENVIRONMENT.items():
    environ.setdefault(key, value)
  environ.setdefault("TPU_LIBRARY_PATH", path)
  return path


def target_devices(target: str):
  """(compile-only devices, description) of "tpu:<topology>" (e.g. tpu:v5e:2x2) or
  "cuda:<spec>" (a name in gpu_specs/, e.g. h100, or a .txtpb path)."""
  platform, _, name = target.partition(":")
  if platform == "tpu":
    use_libtpu()
    _host_stays_cpu()
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    topo = topologies.get_topology_desc(name, platform="tpu")
    return list(topo.devices), f"TPU topology {name}"
  if platform == "cuda":
    path = name if name.endswith(".txtpb") else os.path.join(GPU_SPECS, f"{name}_sxm.txtpb")
    if not os.path.exists(path):
      raise TargetUnavailable(f"no GPU description {path} (in {GPU_SPECS}: "
                              f"{sorted(os.listdir(GPU_SPECS))})")
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
      raise TargetUnavailable("the CUDA plugin is not installed: pip install "
                              "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2")
    _host_stays_cpu()
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    with open(path) as f:
      spec = f.read()
    topo = topologies.get_topology_desc("", platform="cuda", target_config=spec,
                                        topology="1x1x1")
    return list(topo.devices), f"GPU from {os.path.basename(path)}"
  raise ValueError(f"unknown target {target!r}: tpu:<topology> (e.g. tpu:v5e:2x2) or "
                   "cuda:<name> (e.g. cuda:h100)")
