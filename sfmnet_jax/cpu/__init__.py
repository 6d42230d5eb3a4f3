"""The optional CPU plugin: C++ kernels through XLA's FFI, and process settings for XLA:CPU.

This room is the only code that knows about FFI, g++ builds, Winograd, the
large-block cache and huge pages. The networks (`sfmnet_jax.model`) are plain
Flax; `accelerate(module, conv_impl)` (the one seam, `intercept.py`) returns
the module itself where XLA's ops are used, and on the CPU backend a copy of
it whose convolutions, channel attention and remat blocks run on the kernels.
`SFMNET_CPU_KERNELS=0` (or `conv_impl="xla"`) turns the kernels off.

- `kernels.py`: building, loading and calling the C++ kernels (`csrc/`):
  `conv3x3(x, k, algorithm)`, `conv1x1(x, k)`, `depthwise3x3(x, k, xla_op)`,
  `available()`.
- `ops.py`: the kernels as differentiable ops (`add_bias`, `conv3x3`, ...).
- `intercept.py`: `accelerate`, the interceptor.
- `trig.py`: vectorisable atan2, sin and cos for the FreqBlocks.
- `init.py`: parameters initialised on the host (numpy).
- `process.py`, `block_cache.py`, `native.py`: the settings applied before JAX
  starts on CPU-only hosts (XLA:CPU flags, huge pages, the large-block cache).

Importing this package imports no JAX (`process` runs before JAX starts).
"""

import importlib

_EXPORTS = {"accelerate": "intercept", "use_kernels": "intercept", "CONV_IMPLS": "intercept",
            "available": "kernels", "enabled": "kernels", "KernelUnavailable": "kernels",
            "conv3x3": "kernels", "conv1x1": "kernels", "depthwise3x3": "kernels",
            "add_bias": "ops", "ALGORITHMS": "kernels"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"sfmnet_jax.cpu.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module 'sfmnet_jax.cpu' has no attribute {name!r}")
