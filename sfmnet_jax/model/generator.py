"""The two-branch SFMNet generator (the release's `TwoBranch`), in Flax linen, NHWC."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfmnet_jax.model.blocks import FreqBlock, FuseBlock, ResidualGroup
from sfmnet_jax.model.layers import ConvAct, Down, Up, sequential

Dtype = Any

# Computation dtypes by the names configs and flags use (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

NUM_FUSE_BLOCKS = 14
# Blocks that `remat=True` recomputes in the backward pass.
REMAT_BLOCKS = (FreqBlock, ResidualGroup, FuseBlock)


def check_image_batch(x, multiple: int = 8, name: str = "lr_up") -> None:
  """Raises a ValueError unless `x` is (B, H, W, 3) with H and W divisible by `multiple`."""
  shape = tuple(getattr(x, "shape", ()))
  if len(shape) != 4:
    raise ValueError(f"{name} must have shape (B, H, W, 3) (NHWC), got shape {shape}")
  if shape[-1] != 3:
    hint = " (it looks like NCHW: transpose to NHWC)" if shape[1] == 3 else ""
    raise ValueError(f"{name} must have 3 (RGB) channels last, got shape {shape}{hint}")
  h, w = shape[1:3]
  if h % multiple or w % multiple:
    raise ValueError(
        f"{name} height and width must be divisible by {multiple} (three 2x down-"
        f"samplings), got {h}x{w}")


class SFMNet(nn.Module):
  """Spatial-frequency mutual network.

  `SFMNet().apply(variables, lr_up)` takes (B, H, W, 3) images in [0, 1]
  (LR upsampled to the HR size, H and W divisible by 8) and returns
  `(img_out, img_fre)`: the spatial-branch SR result and the frequency-branch
  output, both (B, H, W, 3) float32.

  Attributes:
    num_features: channels C of both branches (64 in the release).
    num_resblocks: ResBlocks per ResidualGroup (2 in the release).
    num_heads: heads of the channel attention (8).
    share_fusion_attention: True (default) reproduces the release, whose
      FuseBlocks apply `fre_att` in both directions; False gives each
      direction its own attention (`spa_att`), as the paper describes.
    dtype: computation dtype (float32, or bfloat16 with float32 parameters;
      FFTs always run in float32).
    remat: recompute each FreqBlock, ResidualGroup and FuseBlock in the
      backward pass instead of storing its activations (`nn.remat`): the
      same numbers and parameters, less memory, more compute.
    spectral_transform: the FreqBlocks' rfft2/irfft2 by FFT ("fft", the
      release's) or by DFT matrix products ("dft": what TPUs run best; the same
      values to float32 rounding, see `spectral.py`).
  """

  num_features: int = 64
  num_resblocks: int = 2
  num_heads: int = 8
  share_fusion_attention: bool = True
  dtype: Dtype = jnp.float32
  remat: bool = False
  spectral_transform: str = "fft"

  def __call__(self, lr_up):
    check_image_batch(lr_up)
    return self._generate(lr_up)

  @nn.compact
  def _generate(self, lr_up):
    c, n, dt = self.num_features, self.num_resblocks, self.dtype
    lr_up = jnp.asarray(lr_up, jnp.float32)
    wrap = nn.remat if self.remat else (lambda cls: cls)
    freq_cls, group_cls, fuse_cls = (wrap(cls) for cls in REMAT_BLOCKS)
    seq = sequential

    def freq():
      return freq_cls(c, dtype=dt, transform=self.spectral_transform)

    def group():
      return group_cls(c, n, dtype=dt)

    head_act = lambda: ConvAct(c, 3, act="prelu", dtype=dt)  # noqa: E731
    tail_act = lambda: ConvAct(3, 3, act="prelu", dtype=dt)  # noqa: E731
    # The release's `conv_fuse` ModuleList: children conv_fuse/layers_0..13.
    fuse = seq("conv_fuse", *[
        fuse_cls(c, self.num_heads, self.share_fusion_attention, dtype=dt)
        for _ in range(NUM_FUSE_BLOCKS)
    ]).layers

    # Frequency branch.
    x_f = seq("head_fre", head_act())(lr_up)
    d1 = seq("down1_fre", Down(c, dtype=dt), freq())(x_f)
    d1m = seq("down1_fre_mo", freq())(d1)
    d2 = seq("down2_fre", Down(c, dtype=dt), freq())(d1m)
    d2m = seq("down2_fre_mo", freq())(d2)
    d3 = seq("down3_fre", Down(c, dtype=dt), freq())(d2m)
    d3m = seq("down3_fre_mo", freq())(d3)
    nk = seq("neck_fre", freq())(d3m)
    nm = seq("neck_fre_mo", freq())(nk) + d3m
    u1 = seq("up1_fre", Up(c, dtype=dt), freq())(nm)
    u1m = seq("up1_fre_mo", freq())(u1) + d2m
    u2 = seq("up2_fre", Up(c, dtype=dt), freq())(u1m)
    u2m = seq("up2_fre_mo", freq())(u2) + d1m
    u3 = seq("up3_fre", Up(c, dtype=dt), freq())(u2m)
    u3m = seq("up3_fre_mo", freq())(u3) + x_f
    img_fre = seq("tail_fre", tail_act())(u3m).astype(jnp.float32) + lr_up

    # Spatial branch, fused with the frequency features after every stage.
    x = seq("head", head_act())(lr_up)
    a = fuse[0](d1, seq("down1", Down(c, dtype=dt), group())(x))
    m1 = seq("down1_mo", group())(a)
    b = fuse[1](d1m, m1)
    a = fuse[2](d2, seq("down2", Down(c, dtype=dt), group())(b))
    m2 = seq("down2_mo", group())(a)
    b = fuse[3](d2m, m2)
    a = fuse[4](d3, seq("down3", Down(c, dtype=dt), group())(b))
    m3 = seq("down3_mo", group())(a)
    b = fuse[5](d3m, m3)
    a = fuse[6](nk, seq("neck", group())(b))
    mn = seq("neck_mo", group())(a) + m3
    b = fuse[7](nm, mn)
    a = fuse[8](u1, seq("up1", Up(c, dtype=dt), group())(b))
    q1 = seq("up1_mo", group())(a) + m2
    b = fuse[9](u1m, q1)
    a = fuse[10](u2, seq("up2", Up(c, dtype=dt), group())(b))
    q2 = seq("up2_mo", group())(a) + m1
    b = fuse[11](u2m, q2)
    a = fuse[12](u3, seq("up3", Up(c, dtype=dt), group())(b))
    q3 = seq("up3_mo", group())(a) + x
    b = fuse[13](u3m, q3)
    img_out = seq("tail", tail_act())(b).astype(jnp.float32) + lr_up
    return img_out, img_fre


def compute_dtype(name):
  """The computation dtype named "float32" or "bfloat16" (a dtype passes through)."""
  if not isinstance(name, str):
    return name
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; one of {sorted(DTYPES)}")
  return DTYPES[name]


def dtype_name(dtype) -> str:
  """"float32" or "bfloat16" for a computation dtype."""
  return jnp.dtype(dtype).name


def abstract_variables(model: nn.Module, image_size=(32, 32)):
  """Shapes and dtypes of an image model's variables (traced; nothing computed or compiled)."""
  dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), dummy)


def init_variables(model: nn.Module, seed: int = 0, image_size=(8, 8)):
  """`model.init`'s variables for `seed`: the modules' own initialisers (PyTorch's defaults).

  Flax's `lazy_init` keeps only the parameter draws (no forward pass) and runs
  them op by op, so no large program is compiled; the values equal
  `jax.jit(model.init)`'s. `image_size` shapes the trace only (the generator's
  variables do not depend on it, a discriminator's do).
  """
  dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  return model.lazy_init(jax.random.key(seed), dummy)


def init_generator(model: SFMNet, seed: int = 0, image_size=(8, 8)):
  """The generator's initial variables ({"params": ...}) for `seed`."""
  return init_variables(model, seed, image_size)


@functools.lru_cache(maxsize=4)
def jitted_apply(model: nn.Module):
  """`jax.jit(model.apply)`, one per model, so that callers share its compiled programs."""
  return jax.jit(model.apply)


def count_params(tree) -> int:
  """Number of scalar values in a pytree of arrays."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))
