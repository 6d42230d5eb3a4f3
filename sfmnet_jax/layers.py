"""Basic layers of the SFMNet release, in NHWC.

Parameter names mirror the PyTorch release so that checkpoints map by a
generic rule (see `release_weights.py`): a child that PyTorch keeps in an
`nn.Sequential` at index N is named `layers_N` here (Flax's own convention
for list attributes), conv kernels are `kernel` in (kh, kw, in, out) layout.

Initialisers follow PyTorch's defaults (kaiming-uniform with a = sqrt(5),
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), so training
from scratch behaves like the release. The convolutions themselves, with
their hand-written gradients, are `ops.py`'s.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax import cpu_kernels
from sfmnet_jax.ops import add_bias, conv1x1, conv3x3, depthwise3x3

Dtype = Any

# U(-1/sqrt(fan_in), +1/sqrt(fan_in)): PyTorch's default for conv/linear weights.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _leaf_init(path, shape, kernel_shapes):
  """('uniform', bound) or ('constant', value) for a parameter, by the rules of this file.

  kernel: U(+-1/sqrt(fan_in)) with fan_in = prod(shape[:-1]); bias: the same
  bound as its sibling kernel; PReLU `weight` 0.25; `scale` and `temperature` 1.
  """
  name = path[-1]
  if name == "kernel":
    return "uniform", 1.0 / np.sqrt(np.prod(shape[:-1]))
  if name == "bias":
    kernel = kernel_shapes[path[:-1]]
    return "uniform", 1.0 / np.sqrt(np.prod(kernel[:-1]))
  if name == "weight":
    return "constant", PReLU.init_value
  if name in ("scale", "temperature"):
    return "constant", 1.0
  raise ValueError(f"no initialiser rule for parameter {'/'.join(path)}")


def abstract_variables(model: nn.Module, image_size=(32, 32)):
  """Shapes and dtypes of an image model's variables (traced; nothing computed or compiled)."""
  dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), dummy)


def host_init(abstract_params, seed: int):
  """Initialises parameters of the given shapes on the host, as the modules' initialisers do.

  Same distributions as `module.init` (PyTorch's defaults), drawn with numpy:
  `jax.jit(module.init)` spends minutes of XLA:CPU compile on hundreds of
  threefry calls, while this takes well under a second for SFMNet.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(abstract_params)
  kernels = {p[:-1]: tuple(v.shape) for p, v in flat.items() if p[-1] == "kernel"}
  rng = np.random.default_rng(seed)
  out = {}
  for path in sorted(flat):
    shape, dtype = tuple(flat[path].shape), flat[path].dtype
    kind, value = _leaf_init(path, shape, kernels)
    if kind == "uniform":
      out[path] = rng.uniform(-value, value, size=shape).astype(dtype)
    else:
      out[path] = np.full(shape, value, dtype)
  return traverse_util.unflatten_dict(out)


def sequential(name: str, *layers) -> nn.Sequential:
  """An `nn.Sequential` whose module at position N is named `layers_N`.

  This is how the release's `nn.Sequential` children (`name.N`) appear in
  Flax. Modules are re-created unbound so that the Sequential, not the
  calling compact method, owns them.
  """
  return nn.Sequential(
      [l.clone(parent=None) if isinstance(l, nn.Module) else l for l in layers], name=name)


def nan_to_num(x: jax.Array, value: float = 1e-5) -> jax.Array:
  """The release's `torch.nan_to_num(x, nan=1e-5, posinf=1e-5, neginf=1e-5)`."""
  return jnp.where(jnp.isfinite(x), x, jnp.asarray(value, x.dtype))


def pixel_unshuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Space-to-depth with PyTorch's order: out channel c*r*r + i*r + j <- pixel (r*y+i, r*x+j) of c."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 5, 2, 4)  # b, h', w', c, i, j
  return x.reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """Depth-to-space, the exact inverse of `pixel_unshuffle` (PyTorch's PixelShuffle)."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # b, h, i, w, j, c
  return x.reshape(b, h * r, w * r, c)


class PReLU(nn.Module):
  """`torch.nn.PReLU()`: one learnable slope shared by all channels (param `weight`, shape (1,))."""

  init_value: float = 0.25

  @nn.compact
  def __call__(self, x):
    slope = self.param("weight", nn.initializers.constant(self.init_value), (1,))
    slope = slope.astype(x.dtype)
    return jnp.where(x >= 0, x, slope * x)


class Scale(nn.Module):
  """A learnable scalar (`re_scale.scale` in the release), init 1.0."""

  init_value: float = 1.0

  @nn.compact
  def __call__(self, x):
    s = self.param("scale", nn.initializers.constant(self.init_value), (1,))
    return x * s.astype(x.dtype)


class Conv(nn.Module):
  """k x k convolution, stride 1, zero padding k//2 (NHWC, kernel (k, k, in, out))."""

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  # > 1: a 1x1 conv without bias returns its output channels in this many equal
  # parts, each computed on its own (the same numbers as splitting the whole
  # output, without copying the parts out of it).
  parts: int = 1

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    cin = x.shape[-1]
    kernel = self.param("kernel", torch_kernel_init, (k, k, cin, self.features))
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.parts > 1:
      if k != 1 or self.use_bias or self.features % self.parts:
        raise ValueError("parts > 1 needs a 1x1 conv without bias and features divisible by it")
      return tuple(conv1x1(x, kp) for kp in jnp.split(kernel[0, 0], self.parts, axis=-1))
    if k == 1:  # a matmul over pixels
      y = conv1x1(x, kernel[0, 0])
    elif k == 3:
      y = conv3x3(x, kernel, cpu_kernels.layer_algorithm(cin, self.features))
    else:
      y = cpu_kernels.xla_conv_same(x, kernel)
    if self.use_bias:
      bias = self.param("bias", torch_bias_init(k * k * cin), (self.features,))
      y = add_bias(y, bias.astype(self.dtype))
    return y


class DepthwiseConv3x3(nn.Module):
  """Depthwise 3x3 convolution, no bias, padding 1 (kernel (3, 3, 1, C)); see `depthwise3x3`.

  Called with a tuple of arrays (the channels of one input in parts, as
  `Conv(parts=...)` returns them), it convolves each with its kernel channels.
  """

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    parts = isinstance(x, (tuple, list))
    xs = tuple(x) if parts else (x,)
    c = sum(a.shape[-1] for a in xs)
    kernel = self.param("kernel", torch_kernel_init, (3, 3, 1, c))[:, :, 0, :].astype(self.dtype)
    out, start = [], 0
    for a in xs:
      out.append(depthwise3x3(a.astype(self.dtype), kernel[..., start:start + a.shape[-1]]))
      start += a.shape[-1]
    return tuple(out) if parts else out[0]


class ConvAct(nn.Module):
  """Release `ConvAct`: conv k x k without bias (`layers`), then an optional activation (`act`)."""

  features: int
  kernel_size: int = 3
  act: Optional[str] = None  # None | 'relu' | 'prelu'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, self.kernel_size, use_bias=False, dtype=self.dtype, name="layers")(x)
    if self.act == "relu":
      x = nn.relu(x)
    elif self.act == "prelu":
      x = PReLU(name="act")(x)
    elif self.act is not None:
      raise ValueError(f"unknown activation {self.act!r}")
    return x


class Down(nn.Module):
  """Release `Down`: ConvAct 3x3 -> PixelUnshuffle(2) -> ConvAct 1x1 (4C -> C). Halves H and W."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.features
    return sequential(
        "layers",
        ConvAct(c, 3, dtype=self.dtype),
        pixel_unshuffle,
        ConvAct(c, 1, dtype=self.dtype),
    )(x)


class Up(nn.Module):
  """Release `Up` (an nn.Sequential there): conv 1x1 C -> 4C with bias -> PixelShuffle(2) -> PReLU."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(4 * self.features, 1, use_bias=True, dtype=self.dtype, name="layers_0")(x)
    x = pixel_shuffle(x)
    return PReLU(name="layers_2")(x)


def recompute_in_backward(cls):
  """`cls` (a Flax module class) storing only its inputs for the backward pass.

  What `nn.remat` (`jax.checkpoint`) promises, in a form XLA:CPU keeps: XLA:CPU
  drops the optimisation barriers that `jax.checkpoint` places, and common-
  subexpression elimination then merges the recomputation with the forward, so
  that `nn.remat` stores as much as no remat at all (measured: the same buffer
  peak at C=64, batch 8). Here the backward recomputes the block from inputs
  that depend on the incoming gradient (`x + 0 * g[0]`, which XLA cannot fold
  for floats), so that the recomputation can be neither merged nor scheduled
  before the gradient arrives. Values and gradients are those of `cls`.
  """
  def plain(module):
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(cls)
              if f.init and f.name not in ("parent", "name")}
    return cls(**fields, parent=None)

  class Recomputed(cls):

    def __call__(self, *xs):
      definition = plain(self)
      algorithm = cpu_kernels.conv_algorithm_name()  # the recomputation's convs sum alike

      def fn(mdl, *xs):
        return cls.__call__(mdl, *xs)

      def fwd(mdl, *xs):
        return cls.__call__(mdl, *xs), (mdl.variables, xs)

      def bwd(residuals, g):
        variables, xs = residuals
        anchor = 0.0 * jax.tree_util.tree_leaves(g)[0].ravel()[0]
        xs = tuple(x + anchor.astype(x.dtype) for x in xs)
        with cpu_kernels.conv_algorithm(algorithm):
          _, vjp = jax.vjp(lambda params, *xs: definition.apply(
              {**variables, "params": params}, *xs), variables["params"], *xs)
        params_t, *xs_t = vjp(g)
        return ({"params": params_t}, *xs_t)

      return nn.custom_vjp(fn, forward_fn=fwd, backward_fn=bwd)(self, *xs)

  Recomputed.__name__ = Recomputed.__qualname__ = cls.__name__
  return Recomputed
