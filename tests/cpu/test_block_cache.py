"""The large-block cache (cpu/csrc/block_cache.cc) preloaded into child processes: reuse without
page faults, its memory bound, frees it does not own, and XLA's numbers through it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from sfmnet_jax.cpu import block_cache, process

MiB = 1 << 20


@pytest.fixture(scope="module")
def library():
  if not block_cache.enabled({}):
    pytest.skip("the block cache needs Linux with glibc")
  path = block_cache.ensure_built()
  if path is None:
    pytest.skip("no C++ compiler to build the block cache")
  return path


# A child's prelude: the cache's counters and ctypes access to the C allocator.
PRELUDE = """
import ctypes, os, resource, sys
from sfmnet_jax.cpu import block_cache
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.realloc.restype = ctypes.c_void_p
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
libc.malloc_usable_size.restype = ctypes.c_size_t
MiB = 1 << 20
def alloc(n):
  p = ctypes.c_void_p()
  assert libc.posix_memalign(ctypes.byref(p), 64, n) == 0
  return p.value
def faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""


def run_child(code, library, env=None, check=True):
  full = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  # A fixed limit on warm memory (the default, a quarter of physical memory, has its test).
  full.update(LD_PRELOAD=library, PYTHONPATH=str(REPO), SFMNET_HUGEPAGES="0",
              SFMNET_BLOCK_CACHE_KEEP_MB="4096")
  full.update(env or {})
  out = subprocess.run([sys.executable, "-c", PRELUDE + code], env=full, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_a_freed_block_is_reused_without_page_faults(library):
  """256 MiB allocated, written, freed, twice: the second round gets the same block and takes
  no page faults (glibc would unmap it and fault every page in again)."""
  out = run_child("""
rounds = []
for _ in range(2):
  f0 = faults()
  p = alloc(256 * MiB); ctypes.memset(p, 1, 256 * MiB); libc.free(p)
  rounds.append((p, faults() - f0))
small = alloc(MiB); libc.free(small)  # below 32 MiB: glibc's
print(rounds[0][0] == rounds[1][0], rounds[0][1], rounds[1][1], block_cache.stats())
print(os.environ.get("LD_PRELOAD"), block_cache.loaded())
""", library)
  same, first, second, stats = out.stdout.splitlines()[0].split(" ", 3)
  assert same == "True"
  assert int(first) >= 256 * MiB // (2 * MiB)  # 4 KiB pages, or 2 MiB ones at the least
  assert int(second) < 20, out.stdout
  stats = eval(stats)  # a dict of ints  pylint: disable=eval-used
  assert stats["requests"] == 2 and stats["fresh"] == 1 and stats["reused"] == 1, stats
  assert stats["peak_bytes"] == 256 * MiB and stats["warm_bytes"] == 256 * MiB
  assert stats["live_bytes"] == 0 and stats["fallbacks"] == 0
  # Loaded, and gone from the environment that children inherit.
  assert out.stdout.splitlines()[1] == "None True"


def test_warm_memory_stays_within_the_peak_and_the_keep_limit(library):
  code = """
a, b = alloc(256 * MiB), alloc(256 * MiB)          # peak: 512 MiB live
libc.free(a); libc.free(b)                          # both warm: 512 MiB, within the peak
s1 = block_cache.stats()
c = alloc(64 * MiB)   # fits no warm block (> 2x): warm + live + 64 MiB would exceed the peak
s2 = block_cache.stats()
d = alloc(200 * MiB)  # the remaining warm 256 MiB block serves it (within 2x)
s3 = block_cache.stats()
libc.free(c); libc.free(d)
print([s1, s2, s3, block_cache.stats()])
"""
  s1, s2, s3, s4 = eval(run_child(code, library).stdout)  # pylint: disable=eval-used
  assert s1["warm_bytes"] == 512 * MiB and s1["evicted"] == 0
  assert s2["evicted"] == 1 and s2["warm_bytes"] == 256 * MiB and s2["fresh"] == 3
  assert s3["reused"] == 1 and s3["warm_bytes"] == 0 and s3["live_bytes"] == 320 * MiB
  assert s4["warm_bytes"] + s4["live_bytes"] <= s4["peak_bytes"] == 512 * MiB
  # SFMNET_BLOCK_CACHE_KEEP_MB=0: nothing stays warm.
  keep0 = eval(run_child(code, library, {"SFMNET_BLOCK_CACHE_KEEP_MB": "0"}).stdout)  # pylint: disable=eval-used
  assert all(s["warm_bytes"] == 0 for s in keep0) and keep0[-1]["reused"] == 0


def test_default_keep_limit_is_a_quarter_of_physical_memory(library):
  code = "print(block_cache.stats()['keep_bytes'])\n"
  out = run_child(code, library, {"SFMNET_BLOCK_CACHE_KEEP_MB": ""})
  assert int(out.stdout) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
  assert int(run_child(code, library, {"SFMNET_BLOCK_CACHE_KEEP_MB": "300"}).stdout) == 300 * MiB


def test_realloc_usable_size_and_frees_it_does_not_own(library):
  out = run_child("""
p = alloc(40 * MiB)
ctypes.memset(p, 7, 40 * MiB)
assert libc.malloc_usable_size(p) == 40 * MiB
q = libc.realloc(p, 50 * MiB)   # moves to the next allocator, contents kept
assert q != p and ctypes.string_at(q + 40 * MiB - 3, 3) == b"\\x07\\x07\\x07"
libc.free(q)
big = ctypes.create_string_buffer(64 * MiB)  # malloc (CPython): never the cache's
print(block_cache.stats()["live_bytes"], block_cache.stats()["requests"])
""", library)
  assert out.stdout.split() == ["0", "1"]


def test_a_double_free_aborts_with_a_message(library):
  out = run_child("p = alloc(64 * MiB); libc.free(p); libc.free(p)\n", library, check=False)
  assert out.returncode != 0 and "free() of a block not allocated" in out.stderr


def test_disabled_cache_serves_nothing(library):
  out = run_child("p = alloc(64 * MiB); libc.free(p); print(block_cache.stats())\n", library,
                  {"SFMNET_BLOCK_CACHE": "0"})
  stats = eval(out.stdout)  # pylint: disable=eval-used
  assert stats["requests"] == 0 and stats["peak_bytes"] == 0


def test_xla_results_through_the_cache_are_unchanged(library, tmp_path):
  """A jitted conv stack with temp buffers over 32 MiB, run three times in a child with the
  cache: bit-identical to this process's result, with the cache serving XLA's buffers."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 128, 128, 32)).astype(np.float32)
  k = (rng.standard_normal((3, 3, 32, 32)) * 0.1).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x, k=k)
  code = f"""
import jax, jax.numpy as jnp, numpy as np
def f(x, k):
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
  z = jax.lax.conv_general_dilated(jnp.tanh(y), k, (1, 1), "SAME", dimension_numbers=dn)
  return jnp.concatenate([y, z, y * z], -1).sum(-1)
d = np.load({str(tmp_path / 'in.npz')!r})
g = jax.jit(f)
outs = [np.asarray(g(d["x"], d["k"])) for _ in range(3)]
assert all(np.array_equal(o, outs[0]) for o in outs)
np.save({str(tmp_path / 'out.npy')!r}, outs[0])
print(block_cache.stats())
"""
  stats = eval(run_child(code, library).stdout.strip().splitlines()[-1])  # pylint: disable=eval-used
  assert stats["requests"] >= 3 and stats["reused"] >= 2, stats
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=dn)
  z = jax.lax.conv_general_dilated(jnp.tanh(y), k, (1, 1), "SAME", dimension_numbers=dn)
  want = np.asarray(jax.jit(lambda y, z: jnp.concatenate([y, z, y * z], -1).sum(-1))(y, z))
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-5, atol=1e-5)


def test_memory_environment_composes_tunables_and_preload(monkeypatch, library):
  monkeypatch.setattr(process.platform, "system", lambda: "Linux")
  monkeypatch.setattr(process.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(process, "_thp_mode", lambda: "madvise")
  monkeypatch.setattr(block_cache, "loaded", lambda: False)
  env = process.memory_environment({})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "LD_PRELOAD": library}
  # A user's preload stays, after ours; ours is not added twice (nor when it failed to load).
  assert process.memory_environment({"LD_PRELOAD": "/x/libfoo.so"})["LD_PRELOAD"] == \
      f"{library} /x/libfoo.so"
  assert "LD_PRELOAD" not in process.memory_environment({"LD_PRELOAD": f"/x/a.so:{library}"})
  assert process.memory_environment({"SFMNET_BLOCK_CACHE": "0", "SFMNET_HUGEPAGES": "0"}) == {}
  monkeypatch.setattr(block_cache, "loaded", lambda: True)  # after the re-execution
  assert process.memory_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == {}


def test_entry_points_run_with_the_cache_and_children_do_not_inherit_it(library):
  """prepare_process() re-executes with the cache preloaded; the library leaves LD_PRELOAD,
  so a child of that process (here a second Python) runs without it."""
  code = ("import os, subprocess, sys\n"
          "from sfmnet_jax import runtime\n"
          "from sfmnet_jax.cpu import block_cache\n"
          "runtime.prepare_process()\n"
          "child = subprocess.run([sys.executable, '-c', 'from sfmnet_jax.cpu import block_cache; "
          "print(block_cache.loaded())'], capture_output=True, text=True)\n"
          "print(block_cache.loaded(), os.environ.get('LD_PRELOAD'), child.stdout.strip())\n")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "SFMNET_BLOCK_CACHE")}
  env["PYTHONPATH"] = str(REPO)
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "None", "False"]
