"""SFMNet's layers and blocks against closed forms and a numpy rewrite of the release's."""

import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax.model import layers, spectral
from sfmnet_jax.model.blocks import ChannelAttention


def test_pixel_unshuffle_matches_torch_index_formula():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
  y = np.asarray(layers.pixel_unshuffle(jnp.asarray(x)))
  assert y.shape == (2, 3, 4, 12)
  for c in range(3):
    for i in range(2):
      for j in range(2):
        np.testing.assert_array_equal(y[..., c * 4 + i * 2 + j], x[:, i::2, j::2, c])
  np.testing.assert_array_equal(layers.pixel_shuffle(jnp.asarray(y)), x)


def test_amplitude_phase_equal_numpy_and_have_zero_safe_gradients():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 6, 3)).astype(np.float32)
  amp, pha = spectral.amplitude_phase(jnp.asarray(x))
  ref = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
  np.testing.assert_allclose(amp, np.abs(ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pha, np.angle(ref), atol=1e-5)
  # At z == 0: torch.angle's values (atan2 of the signed zeros), zero gradients, not NaN.
  zeros = jnp.zeros(4)
  g_amp = jax.grad(lambda r: spectral.amplitude(jax.lax.complex(r, r)).sum())(zeros)
  g_pha = jax.grad(lambda r: spectral.phase(jax.lax.complex(r, 0 * r)).sum())(zeros)
  assert np.array_equal(g_amp, np.zeros(4)) and np.array_equal(g_pha, np.zeros(4))
  signed = jax.lax.complex(jnp.array([0.0, -0.0, 0.0, -0.0]), jnp.array([0.0, 0.0, -0.0, -0.0]))
  want = np.arctan2(np.float32([0.0, 0.0, -0.0, -0.0]), np.float32([0.0, -0.0, 0.0, -0.0]))
  got = np.asarray(spectral.phase(signed))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
  np.testing.assert_array_equal(spectral.amplitude(signed), np.zeros(4))


def test_the_dft_transform_is_numpys_fft():
  """`spectral.rdft2` / `irdft2` (DFT matrix products, channels last) are numpy's rfft2 and
  irfft2 in float64 to float32 accuracy, odd and even sizes, the Nyquist bin included."""
  rng = np.random.default_rng(2)
  for h, w in ((8, 6), (6, 7), (16, 16)):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    want = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
    got = np.asarray(spectral.rdft2(jnp.asarray(x)))
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
    # Any half spectrum (its bins 0 and W/2 not real): irfft2 ignores their imaginary parts.
    z = (rng.normal(size=want.shape) + 1j * rng.normal(size=want.shape)).astype(np.complex64)
    back = np.fft.irfft2(z.astype(np.complex128), s=(h, w), axes=(1, 2))
    np.testing.assert_allclose(spectral.irdft2(jnp.asarray(z), (h, w)), back, atol=2e-6)
  assert spectral.transforms("fft") == (spectral.rfft2, spectral.irfft2)
  with np.testing.assert_raises_regex(ValueError, "unknown spectral transform 'cufft'"):
    spectral.transforms("cufft")


def test_a_freqblock_by_dft_is_the_freqblock_by_fft():
  """The FreqBlock's two transforms give the same outputs and gradients (float32 rounding)
  on an input whose phases are far from their jumps (checked: 1e-4 of noise moves the
  FFT block's output by less than 1e-3)."""
  from sfmnet_jax.model.blocks import FreqBlock  # pylint: disable=g-import-not-at-top
  fft, dft = FreqBlock(8), FreqBlock(8, transform="dft")
  x = jax.random.uniform(jax.random.key(4), (2, 8, 8, 8))
  params = fft.init(jax.random.key(5), x)["params"]
  apply = lambda m, p, t: m.apply({"params": p}, t)  # noqa: E731
  noisy = x + 1e-4 * jax.random.normal(jax.random.key(6), x.shape)
  assert np.abs(apply(fft, params, noisy) - apply(fft, params, x)).max() < 1e-3
  np.testing.assert_allclose(apply(dft, params, x), apply(fft, params, x), atol=2e-5)
  loss = lambda m: jax.grad(lambda p: jnp.sum(apply(m, p, x) ** 2))(params)  # noqa: E731
  for a, b in zip(jax.tree_util.tree_leaves(loss(dft)), jax.tree_util.tree_leaves(loss(fft))):
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


def test_channel_attention_equals_per_head_reference():
  """ChannelAttention equals the release's per-head computation, written in numpy (NCHW,
  einops 'b (head c) h w -> b head c (h w)'), in float64."""
  c, heads = 16, 4
  att = ChannelAttention(c, heads)
  x = jax.random.normal(jax.random.key(10), (2, 8, 6, c))
  g = jax.random.normal(jax.random.key(11), (2, 8, 6, c))
  params = att.init(jax.random.key(3), x, g)["params"]
  params = dict(params, temperature=np.array([0.5, 1.0, 2.0, 3.0], np.float32).reshape(heads, 1, 1))
  got = np.asarray(att.apply({"params": params}, x, g), np.float64)
  np.testing.assert_allclose(got, attention_reference(params, x, g, heads), atol=1e-5, rtol=1e-4)


def attention_reference(params, x, g, heads):
  """The release's `Attention.forward(x, g)` in numpy, float64."""
  c = x.shape[-1]
  b, h, w = x.shape[:3]

  def conv1x1(t, kern):
    return np.einsum("bhwc,cd->bhwd", t, kern[0, 0])

  def dw(t, kern):
    tp = np.pad(t, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(tp[:, i:i + t.shape[1], j:j + t.shape[2]] * kern[i, j, 0]
               for i in range(3) for j in range(3))

  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x64, g64 = np.asarray(x, np.float64), np.asarray(g, np.float64)
  q = dw(conv1x1(x64, p["q"]["kernel"]), p["q_dwconv"]["kernel"])
  kv = dw(conv1x1(g64, p["kv"]["kernel"]), p["kv_dwconv"]["kernel"])
  k, v = kv[..., :c], kv[..., c:]
  to_heads = lambda t: t.transpose(0, 3, 1, 2).reshape(b, heads, c // heads, -1)  # noqa: E731
  q, k, v = to_heads(q), to_heads(k), to_heads(v)
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
  logits = q @ k.transpose(0, 1, 3, 2) * p["temperature"][None]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = (attn @ v).reshape(b, c, h, w).transpose(0, 2, 3, 1)
  return conv1x1(out, p["project_out"]["kernel"])


def test_attention_gradient_is_finite_for_a_zero_input():
  """F.normalize's eps: an all-zero query (a black patch) gives finite gradients."""
  att = ChannelAttention(8, 2)
  x = jnp.zeros((1, 4, 4, 8))
  params = att.init(jax.random.key(0), x, x)["params"]
  grads = jax.grad(lambda p, x: att.apply({"params": p}, x, x).sum(), argnums=(0, 1))(params, x)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(grads))


def test_conv_helper_is_pytorch_conv2d():
  """`layers.conv`: padding k // 2, kernel (k, k, in/groups, out), PyTorch's init bounds."""
  x = np.random.default_rng(3).normal(size=(1, 5, 7, 4)).astype(np.float32)
  for k, groups, features in ((3, 1, 6), (1, 1, 6), (3, 4, 4)):
    module = layers.conv(features, k, 4, groups=groups)
    params = module.init(jax.random.key(k + groups), x)["params"]
    assert params["kernel"].shape == (k, k, 4 // groups, features)
    bound = 1 / np.sqrt(4 // groups * k * k)
    assert np.abs(params["kernel"]).max() <= bound and np.abs(params["bias"]).max() <= bound
    y = module.apply({"params": params}, x)
    want = jax.lax.conv_general_dilated(x, params["kernel"], (1, 1), ((k // 2,) * 2,) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups) + params["bias"]
    assert y.shape == (1, 5, 7, features)
    np.testing.assert_allclose(y, want, atol=1e-6)
