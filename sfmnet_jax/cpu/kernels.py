"""C++ CPU kernels for SFMNet's convolutions, called through XLA's FFI (float32, NHWC).

`csrc/convs.cc` computes the convolutions themselves on XLA's own thread pool,
rows split across threads:
- dense 3x3 convs directly, with register tiles of 6 x 16 outputs (8 x 32 or
  16 x 16 with AVX-512) over all 9 * Ci products (`direct`: the release's
  sums), or, where Ci and Co are multiples of 8, by Winograd's F(2x2, 3x3)
  (16 products per 2x2 output tile instead of 36) or F(4x4, 3x3) (36 per 4x4
  tile instead of 144); the input gradient is the same conv of the output
  gradient with the flipped, transposed kernel;
- depthwise 3x3 convs (and their input gradients, with the flipped kernel) as
  nine vectorised multiply-adds per pixel;
- 1x1 convs and their input gradients on the same GEMM tiles, also with one
  kernel per image (the channel attention's attn v).
`csrc/conv_grads.cc` computes the kernel gradients where the arrays lie (a
register-tiled GEMM per image row and tap for dense convs, per image row for
1x1 convs; nine multiply-adds per pixel for depthwise ones; Winograd's
transposed form from 32 channels), summed in a fixed number of chunks so
that the result does not depend on the thread count; the same chunked sums
give bias gradients (per-channel sums) and the attention's per-image q^T k.

The sources are compiled on first use with the machine's C++ compiler
(`$CXX`, else `c++`/`g++`/`clang++`, `-O3 -march=native`, then any flags in
`$SFMNET_CPU_KERNELS_FLAGS`) against the FFI headers that jaxlib installs, into
`~/.cache/sfmnet_jax/kernels/` (keyed by the sources, jaxlib's version, the
CPU and the flags), and loaded from there afterwards. Where the compiler
targets AVX-512, the GEMM tiles hold 16-lane vectors and the Winograd
transforms and depthwise loops take 16 channels at a time (8 on AVX2): every
output is summed over the same products in the same order, so both builds
give the same bits (`SFMNET_CPU_KERNELS_FLAGS=-mno-avx512f` builds the AVX2
kernels on an AVX-512 CPU). Where they cannot be built (no compiler, another
platform) XLA's ops are used and one warning says why; `SFMNET_CPU_KERNELS=0`
turns them off. Only float32 on the CPU backend uses them; elsewhere each call
is XLA's op. The choice is made when a function is traced (JAX's default
backend), so a program traced with the kernels lowers for the CPU only; GPUs
and TPUs never trace them (`accelerate` leaves the model plain there).
"""

import ctypes
import functools
import logging
import os

import jax
import jax.numpy as jnp

from sfmnet_jax import host
from sfmnet_jax.cpu import native

CSRC = os.path.join(os.path.dirname(__file__), "csrc")
SOURCES = tuple(os.path.join(CSRC, f) for f in ("convs.cc", "conv_grads.cc"))
HEADERS = (os.path.join(CSRC, "kernels.h"),)
TARGETS = {"sfmnet_conv3x3": "SfmnetConv3x3",
           "sfmnet_conv3x3_winograd": "SfmnetConv3x3Winograd",
           "sfmnet_conv3x3_winograd4": "SfmnetConv3x3Winograd4",
           "sfmnet_depthwise3x3": "SfmnetDepthwise3x3",
           "sfmnet_conv1x1": "SfmnetConv1x1",
           "sfmnet_conv1x1_kernel_grad": "SfmnetConv1x1KernelGrad",
           "sfmnet_conv3x3_kernel_grad": "SfmnetConv3x3KernelGrad",
           "sfmnet_conv3x3_kernel_grad_winograd": "SfmnetConv3x3KernelGradWinograd",
           "sfmnet_conv3x3_kernel_grad_winograd4": "SfmnetConv3x3KernelGradWinograd4",
           "sfmnet_depthwise3x3_kernel_grad": "SfmnetDepthwise3x3KernelGrad",
           "sfmnet_channel_sum": "SfmnetChannelSum"}
# Calls whose result is (N, H, W, C): 9 multiply-adds per output and input channel
# (Winograd's are counted as the direct sum's, so its GFLOP/s are "effective").
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "kernels")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# GCC's tuning for some CPUs (AMD Zen's, at least) splits a chain of fused multiply-adds
# on 256-bit vectors into separate multiplies and adds (the register tiles of one row,
# the depthwise loops), which rounds differently from the other tiles and builds.
GCC_FLAGS = ("--param=avoid-fma-max-bits=0",)
# Extra compiler flags, appended to FLAGS: e.g. `-mno-avx512f` builds the AVX2 kernels
# (8-lane vectors, 6 x 16 register tiles) on an AVX-512 CPU, to compare the two.
FLAGS_ENV = "SFMNET_CPU_KERNELS_FLAGS"


class KernelUnavailable(RuntimeError):
  """The C++ kernel could not be built or loaded here (the message says why)."""


def enabled(environ=os.environ) -> bool:
  return environ.get("SFMNET_CPU_KERNELS", "1") != "0"


def compiler_flags(environ=os.environ) -> tuple:
  """FLAGS (with GCC_FLAGS for GCC) and then those in $SFMNET_CPU_KERNELS_FLAGS."""
  gcc = GCC_FLAGS if native.is_gcc(native.compiler(environ)) else ()
  return FLAGS + gcc + tuple(environ.get(FLAGS_ENV, "").split())


def library_path(cache_dir=CACHE_DIR, environ=os.environ) -> str:
  """Where the built library lies for this source, jaxlib, CPU and compiler flags."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  key = native.source_key(SOURCES + HEADERS, jaxlib.__version__, host.cpu_name(),
                          host.cpu_vector_extensions(), " ".join(compiler_flags(environ)))
  return os.path.join(cache_dir, f"conv3x3_{key}.so")


def build(path: str, environ=os.environ) -> str:
  """Compiles SOURCES into `path` (written atomically; concurrent builds are safe)."""
  try:
    return native.compile_library(SOURCES, path,
                                  [*compiler_flags(environ), "-I", jax.ffi.include_dir()],
                                  environ)
  except native.BuildError as e:
    raise KernelUnavailable(str(e)) from e


def _load(cache_dir: str) -> str:
  path = library_path(cache_dir)
  if not os.path.exists(path):
    logging.info("Building the CPU conv kernels into %s", path)
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
    logging.warning("3x3 convs use XLA's ops (slower on CPU): %s", e)
    return False


def _call(target, out_shape, xla_op, *operands):
  """`target` on the CPU backend when the kernels are available (float32 only), else
  `xla_op`; decided at trace time."""
  if (any(a.dtype != jnp.float32 for a in operands) or jax.default_backend() != "cpu"
      or not available()):
    return xla_op(*operands)
  out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*operands)


def xla_conv_same(x, k):
  """XLA's stride-1 NHWC conv with zero padding k//2 (kernel (k, k, Ci, Co)): what the
  C++ 3x3 kernels replace, and `layers.Conv` for other odd sizes."""
  p = k.shape[0] // 2
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((p, p), (p, p)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


ALGORITHMS = ("auto", "winograd", "winograd4", "direct")
# Forward targets by Winograd output tile (0: the direct sum).
_FORWARD = {0: "sfmnet_conv3x3", 2: "sfmnet_conv3x3_winograd", 4: "sfmnet_conv3x3_winograd4"}
_KERNEL_GRAD = {0: "sfmnet_conv3x3_kernel_grad", 2: "sfmnet_conv3x3_kernel_grad_winograd",
                4: "sfmnet_conv3x3_kernel_grad_winograd4"}


def check_algorithm(name: str) -> str:
  if name not in ALGORITHMS:
    raise ValueError(f"unknown conv algorithm {name!r}; one of {ALGORITHMS}")
  return name


def _fits(ci: int, co: int) -> bool:
  return ci % 8 == 0 and co % 8 == 0


def layer_algorithm(ci: int, co: int, name: str) -> str:
  """The `algorithm` argument of `conv3x3` for a Ci -> Co layer under the algorithm
  `name`: `name` itself, or "direct" where an explicit Winograd form does not apply."""
  return name if check_algorithm(name) in ("auto", "direct") or _fits(ci, co) else "direct"


def _winograd_tile(ci: int, co: int, algorithm: str, auto: int) -> int:
  """The Winograd output tile (2 or 4) a dense 3x3 conv's kernel uses, or 0 (direct).

  `algorithm` is one of ALGORITHMS; "auto" gives `auto` where both channel counts
  are multiples of 8.
  """
  check_algorithm(algorithm)
  fits = _fits(ci, co)
  if algorithm.startswith("winograd") and not fits:
    raise ValueError(f"Winograd needs channel counts that are multiples of 8, got {ci} -> {co}")
  if algorithm == "auto":
    return auto if fits else 0
  return {"direct": 0, "winograd": 2, "winograd4": 4}[algorithm]


def conv3x3(x: jax.Array, k: jax.Array, algorithm: str = "auto") -> jax.Array:
  """A 3x3, stride-1, padding-1 NHWC conv: the C++ kernel on CPUs (float32), else XLA's.

  `algorithm`: "winograd" (F(2x2, 3x3)) or "winograd4" (F(4x4, 3x3)), both for Ci and
  Co multiples of 8; "direct"; or "auto": where channel counts allow, F(4x4, 3x3)
  on images of at least 32 x 32 and F(2x2, 3x3) on smaller ones (where F(4x4, 3x3)'s
  wider windows cost more), else direct.
  """
  tile = _winograd_tile(x.shape[-1], k.shape[-1], algorithm,
                        auto=4 if min(x.shape[1:3]) >= 32 else 2)
  return _call(_FORWARD[tile], (*x.shape[:3], k.shape[-1]), xla_conv_same, x, k)


def xla_conv1x1(x, k):
  """x (N, H, W, Ci) @ k (Ci, Co) over pixels (or image n @ k[n] for k (N, Ci, Co)), XLA's dot."""
  if k.ndim == 3:
    return jnp.einsum("nhwc,ncd->nhwd", x, k)
  return (x.reshape(-1, x.shape[-1]) @ k).reshape(*x.shape[:-1], k.shape[-1])


def xla_conv1x1_kernel_grad(x, g, per_image=False):
  """sum over pixels of x^T g: (Ci, Co), or per image (N, Ci, Co)."""
  if per_image:
    return jnp.einsum("nhwc,nhwd->ncd", x, g)
  return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


def conv1x1(x: jax.Array, k: jax.Array) -> jax.Array:
  """A 1x1 conv, x (N, H, W, Ci) times k (Ci, Co), or image n times its own k[n] for k
  (N, Ci, Co): C++ on CPUs (float32), else XLA's dot."""
  return _call("sfmnet_conv1x1", (*x.shape[:3], k.shape[-1]), xla_conv1x1, x, k)


def conv1x1_kernel_grad(x: jax.Array, g: jax.Array, per_image: bool = False) -> jax.Array:
  """A 1x1 conv's kernel gradient x^T g (Ci, Co) from its input and output gradient, or
  one per image (N, Ci, Co) with `per_image`."""
  shape = (x.shape[0],) * per_image + (x.shape[-1], g.shape[-1])
  return _call("sfmnet_conv1x1_kernel_grad", shape,
               functools.partial(xla_conv1x1_kernel_grad, per_image=per_image), x, g)


def depthwise3x3(x: jax.Array, k: jax.Array, xla_op) -> jax.Array:
  """A depthwise 3x3 NHWC correlation, padding 1, kernel (3, 3, C): C++ on CPUs, else `xla_op(x, k)`."""
  return _call("sfmnet_depthwise3x3", x.shape, xla_op, x, k)


def xla_conv3x3_kernel_grad(x, g):
  """XLA's kernel gradient of a 3x3, stride-1, padding-1 NHWC conv (what the C++ kernel replaces)."""
  kernel_shape = (3, 3, x.shape[-1], g.shape[-1])
  _, vjp = jax.vjp(lambda k: xla_conv_same(x, k), jnp.zeros(kernel_shape, x.dtype))
  return vjp(g)[0]


def conv3x3_kernel_grad(x: jax.Array, g: jax.Array, algorithm: str = "auto") -> jax.Array:
  """dK (3, 3, Ci, Co) of a 3x3, stride-1, padding-1 NHWC conv, from its input and output gradient.

  `algorithm` as for `conv3x3`, but "auto" uses F(2x2, 3x3) only from 32 channels
  in and out, and direct below, where Winograd's transforms cost what it saves.
  F(4x4, 3x3) ("winograd4") is available but not chosen by "auto": its output
  gradient transform costs what its GEMMs save, and it rounds more.
  """
  ci, co = x.shape[-1], g.shape[-1]
  tile = _winograd_tile(ci, co, algorithm, auto=2 if min(ci, co) >= 32 else 0)
  return _call(_KERNEL_GRAD[tile], (3, 3, ci, co), xla_conv3x3_kernel_grad, x, g)


def depthwise3x3_kernel_grad(x: jax.Array, g: jax.Array, xla_grad) -> jax.Array:
  """dk (3, 3, C) of a depthwise 3x3 conv (padding 1), from its input and output gradient.

  `xla_grad(x, g)` computes it where the C++ kernel is not used.
  """
  return _call("sfmnet_depthwise3x3_kernel_grad", (3, 3, x.shape[-1]), xla_grad, x, g)


def xla_channel_sum(g):
  """The sum of g over all axes but the last (a bias gradient), as XLA's reduce."""
  return jnp.sum(g, axis=tuple(range(g.ndim - 1)))


def channel_sum(g: jax.Array) -> jax.Array:
  """Per-channel sum of an (N, H, W, C) array (a bias gradient): C++ on CPUs (float32).

  XLA:CPU reduces over all pixels in a two-stage reduce-window that runs at a
  fraction of memory speed.
  """
  if g.ndim != 4:
    return xla_channel_sum(g)
  return _call("sfmnet_channel_sum", (g.shape[-1],), xla_channel_sum, g)
