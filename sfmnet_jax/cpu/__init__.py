"""The optional CPU plugin: C++ kernels through XLA's FFI, and process settings for XLA:CPU.

This room is the only code that knows about FFI, g++ builds, Winograd, the
large-block cache and huge pages. The networks (`sfmnet_jax.model`) are plain
Flax. The rest of the package comes in by one door, `accelerate(module,
conv_impl, ...)` below: it returns the module itself wherever XLA's ops are
used (a GPU or TPU, `conv_impl="xla"`, `SFMNET_CPU_KERNELS=0`) without
importing anything more of the plugin, and on the CPU backend a copy of it
whose convolutions, channel attention and remat blocks run on the kernels and
whose `init`/`lazy_init` draw the initial parameters on the host with numpy
(`init.py`). The process settings, which must run before JAX starts, are
reached only through `sfmnet_jax.runtime.prepare_process()`.

- `intercept.py`: the accelerated modules and their interceptor.
- `kernels.py`: building, loading and calling the C++ kernels (`csrc/`).
- `ops.py`: the kernels as differentiable ops (`add_bias`, `conv3x3`, ...).
- `trig.py`: vectorisable atan2, sin and cos for the FreqBlocks.
- `init.py`: parameters initialised on the host (numpy), for accelerated modules.
- `process.py`, `block_cache.py`, `native.py`: the settings applied before JAX
  starts on CPU-only hosts (XLA:CPU flags, huge pages, the large-block cache).

Importing this package imports no JAX (`process` runs before JAX starts).
"""

CONV_IMPLS = ("auto", "xla", "kernels")
ALGORITHMS = ("auto", "winograd", "winograd4", "direct")
TRIG_IMPLS = ("poly", "xla")

__all__ = ["ALGORITHMS", "CONV_IMPLS", "TRIG_IMPLS", "accelerate"]


def accelerate(module, conv_impl: str = "auto", conv_algorithm: str = "auto", platform=None,
               trig: str = "poly"):
  """`module` as it runs best on `platform` (default: JAX's default backend).

  `conv_impl`: "auto" (the kernels on the CPU backend where they build, XLA's ops
  elsewhere), "xla" (XLA's ops everywhere: the module itself) or "kernels" (the
  kernels, or an error saying why not). `conv_algorithm` picks the kernels' 3x3
  forward: "auto" (Winograd outside the frequency branch, direct inside it),
  "direct", "winograd" (F(2x2, 3x3)) or "winograd4" (F(4x4, 3x3)). `trig` picks the
  FreqBlocks' angle / sin / cos: "poly" (`trig.py`) or "xla" (XLA's, as the plain
  module). Off the CPU nothing else of the plugin is imported.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv_impl {conv_impl!r}; one of {CONV_IMPLS}")
  if conv_algorithm not in ALGORITHMS:
    raise ValueError(f"unknown conv algorithm {conv_algorithm!r}; one of {ALGORITHMS}")
  if trig not in TRIG_IMPLS:
    raise ValueError(f"unknown trig {trig!r}; one of {TRIG_IMPLS}")
  if conv_impl == "xla":
    return module
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  if platform != "cpu":
    if conv_impl == "kernels":
      raise ValueError(f"conv_impl='kernels' runs on the CPU backend only, not {platform!r}")
    return module
  from sfmnet_jax.cpu import intercept  # pylint: disable=g-import-not-at-top
  return intercept.accelerate(module, conv_impl, conv_algorithm, trig)
