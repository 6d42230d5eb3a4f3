"""Hand-written CPU kernels for the 3x3 convolutions' kernel gradients, through XLA's FFI.

XLA:CPU computes the kernel gradient of a convolution as a convolution over
the batch: it transposes the layer's input and the output gradient to
batch-minor layout first, fused with the elementwise op that produced the
input, and those transposes (reading with a stride of one image) cost more
than the arithmetic. `csrc/conv_kernel_grads.cc` reads both where they lie
(NHWC): a register-tiled GEMM per image row and tap for dense convs, nine
vectorised multiply-adds per pixel for depthwise ones, on XLA's own thread
pool; the sums do not depend on the thread count.

The source is compiled on first use with the machine's C++ compiler
(`$CXX`, else `c++`/`g++`/`clang++`, `-O3 -march=native`) against the FFI
headers that jaxlib installs, into `~/.cache/sfmnet_jax/kernels/` (keyed by
the source, jaxlib's version and the CPU), and loaded from there afterwards.
Where that is impossible (no compiler, another platform) the XLA path is used
and one warning says why. `SFMNET_CPU_KERNELS=0` turns the kernel off.
Only float32 on the CPU uses it; other dtypes and backends keep XLA's gradient.
"""

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax import runtime

SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "conv_kernel_grads.cc")
TARGETS = {"sfmnet_conv3x3_kernel_grad": "SfmnetConv3x3KernelGrad",
           "sfmnet_depthwise3x3_kernel_grad": "SfmnetDepthwise3x3KernelGrad"}
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "kernels")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


class KernelUnavailable(RuntimeError):
  """The C++ kernel could not be built or loaded here (the message says why)."""


def enabled(environ=os.environ) -> bool:
  return environ.get("SFMNET_CPU_KERNELS", "1") != "0"


def compiler(environ=os.environ):
  """The C++ compiler to use: $CXX, else the first of c++, g++, clang++ on PATH (or None)."""
  if environ.get("CXX"):
    return shutil.which(environ["CXX"])
  return next((p for p in map(shutil.which, ("c++", "g++", "clang++")) if p), None)


def library_path(cache_dir=CACHE_DIR) -> str:
  """Where the built library lies for this source, jaxlib and CPU."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  with open(SOURCE, "rb") as f:
    key = hashlib.sha256(f.read())
  for part in (jaxlib.__version__, runtime.cpu_name(), runtime.cpu_vector_extensions(),
               " ".join(FLAGS)):
    key.update(part.encode())
  return os.path.join(cache_dir, f"conv_kernel_grads_{key.hexdigest()[:16]}.so")


def build(path: str, environ=os.environ) -> str:
  """Compiles SOURCE into `path` (written atomically; concurrent builds are safe)."""
  cxx = compiler(environ)
  if cxx is None:
    raise KernelUnavailable("no C++ compiler found (set $CXX or install g++)")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
      raise KernelUnavailable(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _load(cache_dir: str) -> str:
  path = library_path(cache_dir)
  if not os.path.exists(path):
    logging.info("Building the CPU kernel-gradient kernels into %s", path)
    build(path)
  try:
    lib = ctypes.cdll.LoadLibrary(path)
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, AttributeError) as e:
    raise KernelUnavailable(f"could not load {path}: {e}") from e
  return path


@functools.lru_cache(maxsize=None)
def available(cache_dir: str = CACHE_DIR) -> bool:
  """True when the kernels are enabled, built and registered (built now if needed)."""
  if not enabled():
    return False
  try:
    _load(cache_dir)
    return True
  except KernelUnavailable as e:
    logging.warning("3x3 conv kernel gradients use XLA's (slower on CPU): %s", e)
    return False


def _call(target, out_shape, xla_grad, x, g):
  """`target` on CPUs when the kernels are available (float32 only), else `xla_grad`."""
  if (x.dtype != jnp.float32 or g.dtype != jnp.float32 or jax.default_backend() != "cpu"
      or not available()):
    return xla_grad(x, g)

  def ffi_grad(x, g):
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(x, g)

  return jax.lax.platform_dependent(x, g, cpu=ffi_grad, default=xla_grad)


def xla_conv3x3_kernel_grad(x, g):
  """XLA's kernel gradient of a 3x3, stride-1, padding-1 NHWC conv (what the C++ kernel replaces)."""
  kernel_shape = (3, 3, x.shape[-1], g.shape[-1])
  conv = lambda k: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _, vjp = jax.vjp(conv, jnp.zeros(kernel_shape, x.dtype))
  return vjp(g)[0]


def conv3x3_kernel_grad(x: jax.Array, g: jax.Array) -> jax.Array:
  """dK (3, 3, Ci, Co) of a 3x3, stride-1, padding-1 NHWC conv, from its input and output gradient."""
  return _call("sfmnet_conv3x3_kernel_grad", (3, 3, x.shape[-1], g.shape[-1]),
               xla_conv3x3_kernel_grad, x, g)


def depthwise3x3_kernel_grad(x: jax.Array, g: jax.Array, xla_grad) -> jax.Array:
  """dk (3, 3, C) of a depthwise 3x3 conv (padding 1), from its input and output gradient.

  `xla_grad(x, g)` computes it where the C++ kernel is not used.
  """
  return _call("sfmnet_depthwise3x3_kernel_grad", (3, 3, x.shape[-1]), xla_grad, x, g)


_TARGET = re.compile('custom_call_target="(?:%s)"' % "|".join(map(re.escape, TARGETS)))
_SHAPE = re.compile(r"f32\[([\d,]+)\]")


def custom_call_flops(hlo_text: str) -> float:
  """FLOPs of these kernels' calls in an HLO module's text (XLA's cost analysis counts none).

  A call's line names the result's shape first and the input x's second (inline
  in the operands, or in the operand layout constraints of compiled modules).
  """
  total = 0.0
  for line in hlo_text.splitlines():
    if _TARGET.search(line):
      out, x = ([float(d) for d in m.split(",")] for m in _SHAPE.findall(line)[:2])
      total += 2.0 * np.prod(out) * np.prod(x[:3])  # each weight: one multiply-add per pixel
  return total
