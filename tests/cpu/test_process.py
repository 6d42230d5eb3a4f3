"""The process settings for XLA:CPU (flags, huge pages, the block cache), and that none of
them applies on an accelerator host (JAX_PLATFORMS, installed GPU/TPU plugins)."""

import os
import subprocess
import sys

import pytest

from helpers import REPO
from sfmnet_jax import host
from sfmnet_jax.cpu import block_cache, process

# Prints the process's settings at every interpreter start (a re-execution starts again),
# and its XLA_FLAGS at exit. (The block cache removes itself from LD_PRELOAD as it loads:
# its symbol says it is there.)
SITECUSTOMIZE = """
import atexit, ctypes, os, sys
cache = hasattr(ctypes.CDLL(None), "sfmnet_block_cache_stats")
sys.stderr.write("START %s|%s\\n" % ("block_cache" if cache else "",
                                      os.environ.get("GLIBC_TUNABLES", "")))
atexit.register(lambda: sys.stderr.write("END %s\\n" % os.environ.get("XLA_FLAGS", "")))
"""


def test_configure_xla_flags_adds_respects_and_can_be_disabled():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  value = process.configure_xla_flags(env)
  assert value == ("--xla_force_host_platform_device_count=4 "
                   "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert process.configure_xla_flags(env) == value  # idempotent
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}
  assert process.configure_xla_flags(mine) == "--xla_cpu_experimental_ynn_fusion_type=default"
  off = {"SFMNET_XLA_FLAGS": "0"}
  assert process.configure_xla_flags(off) == "" and "XLA_FLAGS" not in off


@pytest.mark.parametrize("platforms, plugins, chips, accelerator", [
    ("cuda", [], False, True), ("tpu", [], False, True), ("cuda,cpu", [], False, True),
    ("cpu", [], False, False),
    ("cpu", ["jax-cuda12-plugin"], False, False),  # a CPU run asked for on a GPU host
    ("", ["jax-cuda12-plugin"], False, True), ("", ["libtpu"], True, True),
    ("", ["libtpu"], False, False),  # libtpu for ahead-of-time compiles on a CPU host
    ("", [], False, False)])
def test_accelerator_hosts_get_no_cpu_settings(monkeypatch, platforms, plugins, chips,
                                               accelerator):
  env = {"JAX_PLATFORMS": platforms} if platforms else {}
  monkeypatch.setattr(host, "installed_accelerator_plugins", lambda: plugins)
  monkeypatch.setattr(host, "tpu_chips_present", lambda: chips)
  assert host.accelerator_host(env) == accelerator
  monkeypatch.setattr(process.platform, "system", lambda: "Linux")
  monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(process, "_thp_mode", lambda: "madvise")
  monkeypatch.setattr(block_cache, "ensure_built", lambda: "/x/libcache.so")
  monkeypatch.setattr(block_cache, "loaded", lambda: False)
  flags = dict(env, XLA_FLAGS="--a=1")
  changes = process.memory_environment(env)
  if accelerator:
    assert changes == {} and process.configure_xla_flags(flags) == "--a=1"
  else:
    assert changes == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "LD_PRELOAD": "/x/libcache.so"}
    assert "ynn_fusion_type" in process.configure_xla_flags(flags)


def _entry_point_starts(tmp_path, argv, **env):
  """The settings each interpreter start of `python argv` saw (two: it re-executed), and
  XLA_FLAGS at its exit."""
  hook = tmp_path / "hook"
  hook.mkdir(exist_ok=True)
  (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
  paths = [str(hook), *env.pop("extra_paths", []), str(REPO)]
  env = dict({k: v for k, v in os.environ.items()
              if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "XLA_FLAGS", "JAX_PLATFORMS")},
             PYTHONPATH=os.pathsep.join(paths), **env)
  done = subprocess.run([sys.executable, *argv], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert "flags:" in done.stdout or "--config" in done.stdout, done.stderr[-2000:]  # --help
  lines = done.stderr.splitlines()
  starts = [line[len("START "):].split("|") for line in lines if line.startswith("START ")]
  return starts, [line[len("END "):] for line in lines if line.startswith("END ")][-1]


@pytest.mark.skipif(not (block_cache.enabled({}) and block_cache.ensure_built()),
                    reason="no glibc or no C++ compiler: nothing to preload here")
def test_entry_points_change_nothing_on_accelerator_hosts(tmp_path):
  """`python evaluate.py --help` as a new user runs it: on a CPU-only host it re-executes
  with the block cache preloaded and XLA:CPU's flag; with JAX_PLATFORMS naming a GPU or
  TPU, or with a GPU plugin installed (a fake distribution here), it starts once, as is."""
  cpu, flags = _entry_point_starts(tmp_path, ["evaluate.py", "--help"], JAX_PLATFORMS="cpu")
  assert len(cpu) == 2 and cpu[0] == ["", ""] and cpu[1][0] == "block_cache", cpu
  assert "ynn_fusion_type" in flags
  for platforms in ("cuda", "tpu"):
    starts = _entry_point_starts(tmp_path, ["evaluate.py", "--help"], JAX_PLATFORMS=platforms)
    assert starts == ([["", ""]], ""), (platforms, starts)
  site = tmp_path / "site"
  dist = site / "jax_cuda12_plugin-0.10.2.dist-info"
  dist.mkdir(parents=True)
  (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jax-cuda12-plugin\n"
                                 "Version: 0.10.2\n")
  starts = _entry_point_starts(tmp_path, ["-m", "sfmnet_jax.apps.benchmark", "model", "--help"],
                               extra_paths=[str(site)])
  assert starts == ([["", ""]], ""), starts


def test_importing_the_package_sets_nothing():
  code = ("import os, sys; before = dict(os.environ); import sfmnet_jax, sfmnet_jax.model, "
          "sfmnet_jax.cpu, sfmnet_jax.training; "
          "assert all(os.environ.get(k) == before.get(k) for k in "
          "('XLA_FLAGS', 'GLIBC_TUNABLES', 'LD_PRELOAD')), 'environment changed'; "
          "assert sfmnet_jax.SFMNet is sfmnet_jax.model.SFMNet; "
          "print('ok')")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_process_settings_import_no_jax():
  """`runtime.prepare_process()` runs before JAX starts: its modules import none."""
  code = ("import sys; from sfmnet_jax import runtime; from sfmnet_jax.apps import launch; "
          "print('jax' in sys.modules, 'flax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_malloc_tunables(monkeypatch):
  monkeypatch.setattr(process.platform, "system", lambda: "Linux")
  monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(process, "_thp_mode", lambda: "madvise")
  assert process.malloc_tunables({}) == "glibc.malloc.hugetlb=1"
  assert process.malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == \
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert process.malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert process.malloc_tunables({"SFMNET_HUGEPAGES": "0"}) is None
  monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.31"))
  assert process.malloc_tunables({}) is None  # the tunable needs glibc 2.35
  monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(process, "_thp_mode", lambda: "always")  # no need to ask
  assert process.malloc_tunables({}) is None
  monkeypatch.setattr(process.platform, "system", lambda: "Darwin")
  assert process.malloc_tunables({}) is None


def test_nothing_is_set_where_jax_is_not_installed(monkeypatch):
  """An ONNX-only deployment (no JAX): the entry points' process settings do nothing."""
  real = process.importlib.util.find_spec
  monkeypatch.setattr(process.importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax" else real(name, *a))
  called = []
  monkeypatch.setattr(process, "apply_memory_settings", lambda env: called.append("memory"))
  monkeypatch.setattr(process, "configure_xla_flags", lambda env: called.append("flags"))
  env = {}
  process.prepare_process(env)
  assert called == [] and env == {}
  monkeypatch.setattr(process.importlib.util, "find_spec", real)
  process.prepare_process(env)
  assert called == ["memory", "flags"]
