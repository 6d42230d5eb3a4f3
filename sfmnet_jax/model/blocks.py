"""SFMNet's building blocks: ResBlock, ResidualGroup, FreqBlock, ChannelAttention, FuseBlock.

Each block computes what `SFMNET_REFERENCE.md` ("Building blocks") describes
for the authors' release, in NHWC. Child names mirror the release's
`state_dict` names (see `layers.py`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax.model import spectral
from sfmnet_jax.model.layers import ConvAct, Scale, conv, nan_to_num, sequential

Dtype = Any


class ResBlock(nn.Module):
  """ConvAct 3x3 + ReLU -> ConvAct 3x3; output relu(that + input)."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.features
    y = sequential(
        "layers",
        ConvAct(c, 3, act="relu", dtype=self.dtype),
        ConvAct(c, 3, dtype=self.dtype),
    )(x)
    return nn.relu(y + x)


class ResidualGroup(nn.Module):
  """`num_resblocks` ResBlocks then ConvAct 3x3 + PReLU (`body`); output body(x) + s * x."""

  features: int
  num_resblocks: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.features
    body = [ResBlock(c, dtype=self.dtype) for _ in range(self.num_resblocks)]
    body.append(ConvAct(c, 3, act="prelu", dtype=self.dtype))
    return sequential("body", *body)(x) + Scale(name="re_scale")(x)


class FreqBlock(nn.Module):
  """The release's spectral block (all convs with bias).

  y = fpre(x); F = rfft2(y + 1e-8); A, P = |F|, angle(F);
  A2 = A + amp_fuse(A); P2 = P + pha_fuse(P) (3x3 convs on the half spectrum);
  z = |irfft2(A2 cos P2 + 1e-8 + i (A2 sin P2 + 1e-8))|; out = post(z) + x (NaN/inf -> 1e-5).
  Transforms and the amplitude/phase algebra run in float32 whatever `dtype` is;
  `transform` computes rfft2 and irfft2 by FFT ("fft", the release's) or by DFT matrix
  products ("dft", channels last: what a TPU runs best; see `spectral.py`).
  The transforms (`spectrum`, `inverse_magnitude`) and the polar algebra (`polar`,
  `cartesian`) are methods, so that `nn.intercept_methods` can compute them
  another way (the CPU plugin's polynomial phases, the export's real DFTs).
  """

  features: int
  dtype: Dtype = jnp.float32
  transform: str = "fft"

  @nn.compact
  def __call__(self, x):
    c, dt = self.features, self.dtype
    h, w = x.shape[1:3]

    def spectral_fuse(name):
      return sequential(name, conv(c, 3, c, dtype=dt), lambda t: nn.leaky_relu(t, 0.1),
                        conv(c, 3, c, dtype=dt))

    y = conv(c, 1, c, dtype=dt, name="fpre")(x)
    amp, pha = self.polar(self.spectrum(y))
    amp = amp + spectral_fuse("amp_fuse")(amp).astype(jnp.float32)
    pha = pha + spectral_fuse("pha_fuse")(pha).astype(jnp.float32)
    real, imag = self.cartesian(amp, pha)
    z = self.inverse_magnitude(real, imag, (h, w))
    out = conv(c, 1, c, dtype=dt, name="post")(z) + x.astype(dt)
    return nan_to_num(out)

  def _transforms(self):
    """(rfft2, irfft2) of `transform`; "dft" products at float32 accuracy, or in one bfloat16
    pass for a bfloat16 block (its feature maps are bfloat16 on both sides)."""
    precision = (jax.lax.Precision.HIGHEST if jnp.dtype(self.dtype) == jnp.float32
                 else jax.lax.Precision.DEFAULT)
    return spectral.transforms(self.transform, precision)

  def spectrum(self, y):
    """rfft2(y + 1e-8), in float32: (B, H, W, C) -> complex (B, H, W//2+1, C)."""
    forward, _ = self._transforms()
    return forward(y.astype(jnp.float32) + 1e-8)

  def inverse_magnitude(self, real, imag, size):
    """|irfft2(real + 1e-8 + i (imag + 1e-8))| at `size` (H, W)."""
    _, inverse = self._transforms()
    return jnp.abs(inverse(jax.lax.complex(real + 1e-8, imag + 1e-8), size))

  def polar(self, spec):
    """(|F|, angle(F)) of a spectrum, with finite gradients at F == 0."""
    return spectral.amplitude(spec), spectral.phase(spec)

  def cartesian(self, amp, pha):
    """(A cos P, A sin P)."""
    return amp * jnp.cos(pha), amp * jnp.sin(pha)


def l2_norm(t, axis, eps: float = 1e-12):
  """`max(|t|, eps)` over `axis` as `torch.nn.functional.normalize` divides by, in float32,
  with a finite gradient at t == 0 (sqrt(max(|t|^2, eps^2)) is the same value)."""
  t = t.astype(jnp.float32)
  return jnp.sqrt(jnp.maximum(jnp.sum(t * t, axis=axis), eps * eps))


class ChannelAttention(nn.Module):
  """Cross attention across channels: queries from `x`, keys/values from the guide `g`.

  q = dw3x3(q(x)); k, v = split(dw3x3(kv(g))); per head, L2-normalise q and k
  over H*W (eps 1e-12), attn = softmax(q k^T * temperature), a (C/heads x
  C/heads) map per head; out = project_out(attn v). Cost is linear in H*W.
  The heads' maps are computed as the diagonal blocks of one (C x C) map per
  image, the normalisation folded into it ((q/|q|).(k/|k|) = q.k / (|q| |k|)),
  and the map and softmax in float32.
  """

  features: int
  num_heads: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, g):
    c, heads, dt = self.features, self.num_heads, self.dtype
    if c % heads:
      raise ValueError(f"num_features={c} must be divisible by num_heads={heads}")
    temperature = self.param("temperature", nn.initializers.ones, (heads, 1, 1))
    q = conv(c, 1, c, use_bias=False, dtype=dt, name="q")(x)
    q = conv(c, 3, c, use_bias=False, groups=c, dtype=dt, name="q_dwconv")(q)
    kv = conv(2 * c, 1, c, use_bias=False, dtype=dt, name="kv")(g)
    kv = conv(2 * c, 3, 2 * c, use_bias=False, groups=2 * c, dtype=dt, name="kv_dwconv")(kv)

    # Channels last, as the convolutions leave them, and the pixels summed over in place:
    # the release's per-head 'b (head c) h w -> b head c (h w)' (or any reshape of the maps)
    # would be a transposed copy of each map on GPUs and TPUs; the (C x C) products below need
    # none. Keys and values stay one (2C)-channel map (k = kv[..., :C], v = kv[..., C:]):
    # split, both halves would be copied; the products take the halves by their zero or
    # unused rows instead.
    keys = lambda t, axis: jax.lax.slice_in_dim(t, 0, c, axis=axis)  # noqa: E731  k's part
    gram = keys(jnp.einsum("bhwc,bhwd->bcd", q, kv, preferred_element_type=jnp.float32), 2)
    # Each norm's reciprocal apart: their product (1e-24 at eps) would square to 0 in float32.
    k_norm = keys(l2_norm(kv, (1, 2)), 1)
    logits = gram * (1 / l2_norm(q, (1, 2)))[:, :, None] * (1 / k_norm)[:, None, :]
    logits = logits * jnp.repeat(temperature.reshape(heads), c // heads)[None, :, None]
    head = np.arange(c) // (c // heads)  # channel i belongs to head i // (C / heads)
    attn = jax.nn.softmax(jnp.where(head[:, None] == head[None, :], logits, -jnp.inf), axis=-1)
    keys_out = jnp.zeros(attn.shape, jnp.float32)  # k's rows of the map that mixes (k, v)
    mix = jnp.concatenate([keys_out, jnp.swapaxes(attn, 1, 2)], axis=1).astype(kv.dtype)
    out = jnp.einsum("bhwd,bdc->bhwc", kv, mix)  # attn v, per pixel
    return conv(c, 1, c, use_bias=False, dtype=dt, name="project_out")(out)


class FuseBlock(nn.Module):
  """Frequency-spatial interaction block (FSIB with its SFCA), called as fuse(f, s).

  The release's names are swapped relative to their roles: conv `fre` acts on
  the spatial feature and `spa` on the frequency one. With
  `share_attention=True` (the release) `fre_att` serves both directions and no
  `spa_att` parameters exist; `False` uses `spa_att` for the second direction
  (the paper's intent).
  """

  features: int
  num_heads: int = 8
  share_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f, s):
    c, dt = self.features, self.dtype
    s1 = conv(c, 3, c, dtype=dt, name="fre")(s)
    f1 = conv(c, 3, c, dtype=dt, name="spa")(f)
    att1 = ChannelAttention(c, self.num_heads, dtype=dt, name="fre_att")
    att2 = att1 if self.share_attention else ChannelAttention(
        c, self.num_heads, dtype=dt, name="spa_att")
    s2 = att1(s1, f1) + s1
    f2 = att2(f1, s2) + f1
    gates = sequential("fuse", conv(c, 3, 2 * c, dtype=dt), conv(2 * c, 3, c, dtype=dt))(
        jnp.concatenate([s2, f2], axis=-1))
    g_s, g_f = jnp.split(nn.sigmoid(gates), 2, axis=-1)
    return nan_to_num(g_s * s2 + g_f * f2)
