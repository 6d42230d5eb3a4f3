"""The accelerated modules behind the plugin's door (`sfmnet_jax.cpu.accelerate`).

On the CPU backend `accelerate(module, ...)` returns the module itself where the
kernels do not apply (`SFMNET_CPU_KERNELS=0`, kernels that cannot be built, a
dtype other than float32), else the same module (same fields, same parameters
and checkpoints) whose `init`/`lazy_init` draw the parameters on the host
(`init.py`) and whose methods run under `nn.intercept_methods` with an
interceptor that computes, with the custom-VJP ops of `ops.py`:
- every `nn.Conv` that is a 3x3 or 1x1 "same" conv with stride 1, or a
  depthwise 3x3 conv: the C++ conv, its input and kernel gradients, and the
  bias's gradient as a C++ channel sum;
- `ChannelAttention` as one block-masked (C x C) product per image, on the
  C++ GEMMs (the per-head batched dots of the plain module are slow on XLA:CPU);
- `FreqBlock.polar` / `FreqBlock.cartesian` (angle, sin, cos of every spectrum
  bin) by the vectorisable polynomials of `trig.py` (XLA:CPU calls scalar libm),
  unless `trig="xla"`;
- with `remat=True`, each FreqBlock, ResidualGroup and FuseBlock recomputed in
  the backward pass from inputs tied to the incoming gradient (XLA:CPU drops
  the optimisation barriers of `nn.remat` and merges its recomputation back
  into the forward, so that `nn.remat` stores as much as no remat at all).

Numerics: the direct 3x3 sums are the release's (with `trig="xla"` the golden
vector is reproduced); Winograd's (`conv_algorithm`), the polynomial phases
(a few 1e-7 from libm's) and the hand-written gradients round differently, and a
spectrum bin next to the negative real axis can then take the other side of
its 2 pi phase jump: see README ("Numerics").
"""

import contextlib
import contextvars
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfmnet_jax.cpu import kernels, ops
from sfmnet_jax.cpu import trig as polynomial_trig
from sfmnet_jax.cpu.init import host_variables
from sfmnet_jax.model.blocks import ChannelAttention, FreqBlock
from sfmnet_jax.model.generator import REMAT_BLOCKS


def use_kernels(conv_impl: str = "auto") -> bool:
  """Whether `conv_impl` ("auto" or "kernels") means the C++ kernels on this CPU backend:
  "auto" where they build and SFMNET_CPU_KERNELS is not 0; "kernels" there, or an error
  saying why not."""
  if not kernels.enabled():
    return False
  if conv_impl == "kernels" and not kernels.available():
    raise kernels.KernelUnavailable("the C++ kernels could not be built (see the warning)")
  return kernels.available()


def accelerate(module: nn.Module, conv_impl: str, conv_algorithm: str, trig: str) -> nn.Module:
  """`module`'s kernel-backed copy on the CPU backend, or itself where the kernels do not
  apply (disabled, unbuildable, a dtype other than float32). The door is
  `sfmnet_jax.cpu.accelerate`, which checks the arguments and the platform."""
  if isinstance(module, Accelerated):
    return module
  if getattr(module, "dtype", jnp.float32) != jnp.float32 or not use_kernels(conv_impl):
    return module
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  recompute = bool(fields.get("remat", False))
  if "remat" in fields:
    fields["remat"] = False  # recomputed by the interceptor instead
  return _accelerated_class(type(module))(**fields, conv_algorithm=conv_algorithm,
                                          recompute=recompute, trig=trig)


class Accelerated:
  """Marks the classes `accelerate` makes (a subclass of this and the module's class)."""


@functools.lru_cache(maxsize=None)
def _accelerated_class(cls):

  class AcceleratedModule(Accelerated, cls):
    conv_algorithm: str = "auto"
    recompute: bool = False
    trig: str = "poly"

    def __call__(self, *args, **kwargs):
      with nn.intercept_methods(Interceptor(self.conv_algorithm, self.recompute, self.trig)):
        return super().__call__(*args, **kwargs)

    def lazy_init(self, rngs, *args, method=None, **kwargs):
      """The initial variables drawn on the host with numpy (`init.py`), in the shapes the
      module's own initialisers give; with `method` or other options, Flax's."""
      if method is not None or kwargs:
        return super().lazy_init(rngs, *args, method=method, **kwargs)
      return host_variables(super().lazy_init, rngs, *args)

    def init(self, rngs, *args, method=None, **kwargs):
      """As `lazy_init`: one initialiser for the module, whichever Flax entry is called."""
      if method is not None or kwargs:
        return super().init(rngs, *args, method=method, **kwargs)
      return host_variables(super().init, rngs, *args)

  AcceleratedModule.__name__ = cls.__name__
  AcceleratedModule.__qualname__ = cls.__qualname__
  return AcceleratedModule


_RECOMPUTING = contextvars.ContextVar("sfmnet_recomputing", default=False)


@contextlib.contextmanager
def _recomputing():
  token = _RECOMPUTING.set(True)
  try:
    yield
  finally:
    _RECOMPUTING.reset(token)


def _same_padding(padding, k: int) -> bool:
  p = k // 2
  if isinstance(padding, str):
    return padding.upper() == "SAME" or (padding.upper() == "VALID" and p == 0)
  return tuple(tuple(q) for q in padding) == ((p, p), (p, p))


def _ones(value) -> bool:
  return value is None or all(v == 1 for v in ((value,) if isinstance(value, int) else value))


@dataclasses.dataclass(frozen=True)
class Interceptor:
  """Computes the layers it knows with the C++ kernels (see the module docstring)."""

  conv_algorithm: str = "auto"
  recompute: bool = False
  trig: str = "poly"

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if (self.trig == "poly" and isinstance(module, FreqBlock)
        and context.method_name in ("polar", "cartesian")):
      return getattr(polynomial_trig, context.method_name)(*args, **kwargs)
    if context.method_name != "__call__" or module.is_initializing() or kwargs:
      return next_fun(*args, **kwargs)
    if isinstance(module, nn.Conv):
      return self._conv(module, next_fun, *args)
    if isinstance(module, ChannelAttention):
      return self._attention(module, next_fun, *args)
    if self.recompute and isinstance(module, REMAT_BLOCKS) and not _RECOMPUTING.get():
      return self._recompute(module, *args)
    return next_fun(*args)

  def _branch_algorithm(self, module) -> str:
    """The algorithm for convs inside `module`: "auto" is direct in SFMNet's frequency
    branch (its top-level children head_fre, down1_fre_mo, ...), where Winograd's rounding
    would reach a phase."""
    path = module.path
    if self.conv_algorithm == "auto" and path and "fre" in str(path[0]).split("_"):
      return "direct"
    return self.conv_algorithm

  def _conv(self, module: nn.Conv, next_fun, x):
    ks = tuple(module.kernel_size) if not isinstance(module.kernel_size, int) else (
        module.kernel_size,) * 2
    groups = module.feature_group_count
    if (x.ndim != 4 or x.dtype != jnp.float32 or module.dtype not in (None, jnp.float32)
        or module.param_dtype != jnp.float32 or module.mask is not None or ks not in ((1, 1), (3, 3))
        or not _same_padding(module.padding, ks[0]) or not _ones(module.strides)
        or not _ones(module.input_dilation) or not _ones(module.kernel_dilation)
        or groups not in (1, x.shape[-1]) or (groups > 1 and ks != (3, 3))):
      return next_fun(x)
    params = module.variables["params"]
    kernel = params["kernel"]
    if groups > 1:
      if kernel.shape[-1] != groups:  # a channel multiplier: XLA's
        return next_fun(x)
      y = ops.depthwise3x3(x, kernel[:, :, 0, :])
    elif ks == (1, 1):
      y = ops.conv1x1(x, kernel[0, 0])
    else:
      y = ops.conv3x3(x, kernel, kernels.layer_algorithm(x.shape[-1], kernel.shape[-1],
                                                          self._branch_algorithm(module)))
    if module.use_bias:
      y = ops.add_bias(y, params["bias"])
    return y

  def _attention(self, module: ChannelAttention, next_fun, x, g):
    """The attention of all heads as one (C x C) map per image, masked to its (C/h x C/h)
    diagonal blocks (channel = head * (C/h) + j): plain GEMMs over each image's pixels
    (`ops.gram`, and `ops.conv1x1` with a kernel per image), no per-head transposes.
    The L2 normalisation over H*W is folded into the small map:
    (q/|q|).(k/|k|) = (q.k) / (|q| |k|)."""
    if x.dtype != jnp.float32 or g.dtype != jnp.float32 or module.dtype != jnp.float32:
      return next_fun(x, g)
    p = module.variables["params"]
    c, heads = module.features, module.num_heads
    if c % heads:
      return next_fun(x, g)  # the plain module says why
    q = ops.depthwise3x3(ops.conv1x1(x, p["q"]["kernel"][0, 0]), p["q_dwconv"]["kernel"][:, :, 0])
    kv, kv_dw = p["kv"]["kernel"][0, 0], p["kv_dwconv"]["kernel"][:, :, 0]
    # The kv conv and its depthwise conv as their k and v halves (no slice copies).
    k = ops.depthwise3x3(ops.conv1x1(g, kv[:, :c]), kv_dw[..., :c])
    v = ops.depthwise3x3(ops.conv1x1(g, kv[:, c:]), kv_dw[..., c:])
    q_norm = jnp.sqrt(jnp.maximum(jnp.sum(q * q, axis=(1, 2)), 1e-24))  # F.normalize's eps
    k_norm = jnp.sqrt(jnp.maximum(jnp.sum(k * k, axis=(1, 2)), 1e-24))
    logits = ops.gram(q, k) / (q_norm[:, :, None] * k_norm[:, None, :])
    head = jnp.arange(c) // (c // heads)
    logits = logits * p["temperature"].reshape(heads)[head][None, :, None]
    logits = jnp.where(head[:, None] == head[None, :], logits, -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1)
    out = ops.conv1x1(v, jnp.swapaxes(attn, 1, 2))  # out[p, c] = sum_d attn[c, d] v[p, d]
    return ops.conv1x1(out, p["project_out"]["kernel"][0, 0])

  def _recompute(self, module, *xs):
    """`module(*xs)`, storing only its inputs for the backward pass, which recomputes the
    block from inputs that depend on the incoming gradient (`x + 0 * g[0]`, which XLA
    cannot fold for floats), so that the recomputation can be neither merged with the
    forward nor scheduled before the gradient arrives. Values and gradients are the
    block's."""
    cls = type(module)
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name")}
    definition = cls(**fields, parent=None)
    # The recomputation's convs sum as the forward's did (its module paths are the
    # block's own, which no longer say which branch it is in).
    no_recompute = dataclasses.replace(self, recompute=False,
                                       conv_algorithm=self._branch_algorithm(module))

    def fn(mdl, *xs):
      with _recomputing():
        return cls.__call__(mdl, *xs)

    def fwd(mdl, *xs):
      with _recomputing():
        return cls.__call__(mdl, *xs), (mdl.variables, xs)

    def bwd(residuals, g):
      variables, xs = residuals
      anchor = 0.0 * jax.tree_util.tree_leaves(g)[0].ravel()[0]
      xs = tuple(x + anchor.astype(x.dtype) for x in xs)

      def block(params, *xs):
        with nn.intercept_methods(no_recompute):
          return definition.apply({**variables, "params": params}, *xs)

      _, vjp = jax.vjp(block, variables["params"], *xs)
      params_t, *xs_t = vjp(g)
      return ({"params": params_t}, *xs_t)

    return nn.custom_vjp(fn, forward_fn=fwd, backward_fn=bwd)(module, *xs)
