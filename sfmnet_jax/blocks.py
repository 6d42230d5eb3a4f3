"""SFMNet's building blocks: ResBlock, ResidualGroup, FreqBlock, ChannelAttention, FuseBlock.

Each block computes what `../shared/reference/SFMNET_REFERENCE.md` ("Building
blocks") describes for the authors' release, in NHWC. Child names mirror the
release's `state_dict` names (see `layers.py`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sfmnet_jax import spectral
from sfmnet_jax.layers import Conv, ConvAct, DepthwiseConv3x3, Scale, nan_to_num, sequential
from sfmnet_jax.ops import conv1x1, gram

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
  Transforms and the amplitude/phase algebra run in float32 whatever `dtype` is.
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.features
    h, w = x.shape[1:3]

    def spectral_fuse(name):
      return sequential(
          name,
          Conv(c, 3, dtype=self.dtype),
          lambda t: nn.leaky_relu(t, 0.1),
          Conv(c, 3, dtype=self.dtype),
      )

    y = Conv(c, 1, dtype=self.dtype, name="fpre")(x)
    spec = spectral.rfft2(y.astype(jnp.float32) + 1e-8)
    amp = spectral.amplitude(spec)
    pha = spectral.phase(spec)
    amp = amp + spectral_fuse("amp_fuse")(amp).astype(jnp.float32)
    pha = pha + spectral_fuse("pha_fuse")(pha).astype(jnp.float32)
    sin, cos = spectral.sin_cos(pha)
    real = amp * cos + 1e-8
    imag = amp * sin + 1e-8
    z = jnp.abs(spectral.irfft2(jax.lax.complex(real, imag), (h, w)))
    out = Conv(c, 1, dtype=self.dtype, name="post")(z) + x.astype(self.dtype)
    return nan_to_num(out)


class ChannelAttention(nn.Module):
  """Cross attention across channels: queries from `x`, keys/values from the guide `g`.

  q = dw3x3(q(x)); k, v = split(dw3x3(kv(g))); per head, L2-normalise q and k
  over H*W, attn = softmax(q k^T * temperature) (a (C/h x C/h) map), out =
  project_out(attn v). Cost is linear in H*W. The attention map and softmax are
  computed in float32.
  """

  features: int
  num_heads: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, g):
    c, heads = self.features, self.num_heads
    if c % heads:
      raise ValueError(f"num_features={c} must be divisible by num_heads={heads}")
    temperature = self.param("temperature", nn.initializers.ones, (heads, 1, 1))
    q = Conv(c, 1, use_bias=False, dtype=self.dtype, name="q")(x)
    q = DepthwiseConv3x3(dtype=self.dtype, name="q_dwconv")(q)
    # The release's kv conv and its depthwise conv, computed as their k and v halves
    # (the same numbers, without copying the halves out of a 2C-channel array).
    kv = Conv(2 * c, 1, use_bias=False, dtype=self.dtype, parts=2, name="kv")(g)
    k, v = DepthwiseConv3x3(dtype=self.dtype, name="kv_dwconv")(kv)
    # All heads at once as one (C x C) map per image, masked to its (C/h x C/h)
    # diagonal blocks (channel = head*(C/h) + j): plain GEMMs over each image's
    # pixels (`gram`, and `conv1x1` with a kernel per image), no per-head
    # transposes. The L2 normalisation over H*W is folded into the small map:
    # (q/|q|).(k/|k|) = (q.k) / (|q| |k|).
    qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
    q_norm = jnp.maximum(jnp.sqrt(jnp.sum(qf * qf, axis=(1, 2))), 1e-12)  # F.normalize's eps
    k_norm = jnp.maximum(jnp.sqrt(jnp.sum(kf * kf, axis=(1, 2))), 1e-12)
    logits = gram(qf, kf) / (q_norm[:, :, None] * k_norm[:, None, :])
    head = jnp.arange(c) // (c // heads)
    logits = logits * temperature.reshape(heads)[head][None, :, None]
    logits = jnp.where(head[:, None] == head[None, :], logits, -jnp.inf)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = conv1x1(v, jnp.swapaxes(attn, 1, 2))  # out[p, c] = sum_d attn[c, d] v[p, d]
    return Conv(c, 1, use_bias=False, dtype=self.dtype, name="project_out")(out)


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
    c = self.features
    s1 = Conv(c, 3, dtype=self.dtype, name="fre")(s)
    f1 = Conv(c, 3, dtype=self.dtype, name="spa")(f)
    att1 = ChannelAttention(c, self.num_heads, dtype=self.dtype, name="fre_att")
    att2 = att1 if self.share_attention else ChannelAttention(
        c, self.num_heads, dtype=self.dtype, name="spa_att")
    s2 = att1(s1, f1) + s1
    f2 = att2(f1, s2) + f1
    gates = sequential(
        "fuse",
        Conv(c, 3, dtype=self.dtype),
        Conv(2 * c, 3, dtype=self.dtype),
    )(jnp.concatenate([s2, f2], axis=-1))
    g_s, g_f = jnp.split(nn.sigmoid(gates), 2, axis=-1)
    return nan_to_num(g_s * s2 + g_f * f2)
