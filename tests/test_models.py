"""The generator and discriminators against the release's golden vector and closed forms."""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfmnet_jax import SFMNet, count_params, init_generator
from sfmnet_jax import discriminators as D
from helpers import DISCRIMINATOR_GOLDEN, seeded_release_weights
from sfmnet_jax import cpu_kernels, layers, ops, release_weights, spectral
from sfmnet_jax.blocks import ChannelAttention
from sfmnet_jax.layers import abstract_variables


GOLDEN_SCRIPT = """
import json, sys
from sfmnet_jax import runtime
runtime.configure_xla_flags()
import jax, numpy as np
sys.path.insert(0, "tests")
import helpers
from sfmnet_jax import cpu_kernels, load_release_weights
golden = helpers.load_golden()
model, variables = load_release_weights(helpers.GOLDEN)
out, fre = jax.jit(model.apply)(variables, golden["lr_up"])
print(json.dumps({"out": float(np.abs(np.asarray(out) - golden["img_out"]).max()),
                  "fre": float(np.abs(np.asarray(fre) - golden["img_fre"]).max()),
                  "kernels": cpu_kernels.available(), "shape": list(out.shape),
                  "dtype": str(out.dtype)}))
"""


def test_golden_vector_both_outputs(golden):
  """The release's outputs, computed as `train.py` / `evaluate.py` run (their XLA flags
  and the default `conv_algorithm="auto"`).

  A subprocess, because the tests' fast-compile flags round the elementwise code
  differently, and this input sits where 1e-6 of noise moves the release's own
  outputs by 2e-2 (see `conftest.golden_port_outputs`).
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-c", GOLDEN_SCRIPT], cwd=root, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["shape"] == [2, 32, 32, 3] and result["dtype"] == "float32"
  assert result["out"] < 1e-4 and result["fre"] < 1e-4, result
  assert result["kernels"] == cpu_kernels.available()  # the C++ convs where they build
  # The outputs are not trivially the input: the network's residual matters.
  assert np.abs(golden["img_out"] - golden["lr_up"]).max() > 1e-2


def _shapes(model):
  return abstract_variables(model)


@pytest.mark.skipif(not cpu_kernels.available(), reason="the C++ kernels could not be built here")
def test_auto_conv_algorithm_keeps_winograd_out_of_the_frequency_branch():
  """`conv_algorithm="auto"` (the default, which the golden test runs): Winograd's forward
  convs only in the spatial branch, whose values reach no phase (F(4x4, 3x3) at the
  32 x 32 level, F(2x2, 3x3) below); the frequency branch sums directly. "direct" uses
  no Winograd forward, "winograd" and "winograd4" their own form in both branches."""
  from sfmnet_jax import benchmark_profile

  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  kinds = ("sfmnet_conv3x3", "sfmnet_conv3x3_winograd", "sfmnet_conv3x3_winograd4")
  lowered = {}
  for algorithm in ("auto", "direct", "winograd", "winograd4"):
    model = SFMNet(num_features=8, conv_algorithm=algorithm)
    lowered[algorithm] = jax.jit(model.apply).lower(abstract_variables(model, (32, 32)), x)
  # The compiled module names each call's block (the lowered one has no metadata).
  table = benchmark_profile.op_table(lowered["auto"].compile().as_text()).values()
  placed = {kind: {"fre" if "_fre" in block else "spa" for k, block in table if k == kind}
            for kind in kinds}
  # The heads (3 -> C) and tails (C -> 3) sum directly in both branches whatever the option.
  assert placed == {kinds[0]: {"fre", "spa"}, kinds[1]: {"spa"}, kinds[2]: {"spa"}}, placed
  count = {a: {kind: lowered[a].as_text("hlo").count(f'custom_call_target="{kind}"')
               for kind in kinds[1:]} for a in lowered}
  f2, f4 = kinds[1:]
  assert count["direct"] == {f2: 0, f4: 0}, count
  assert 0 < count["auto"][f2] < count["winograd"][f2] and count["winograd"][f4] == 0, count
  assert 0 < count["auto"][f4] < count["winograd4"][f4] and count["winograd4"][f2] == 0, count
  with pytest.raises(ValueError, match="unknown conv_algorithm"):
    SFMNet(num_features=8, conv_algorithm="fft").init(jax.random.key(0), np.zeros((1, 8, 8, 3)))


def test_parameter_counts_match_release():
  assert count_params(_shapes(SFMNet())) == 8_545_942
  assert count_params(_shapes(SFMNet(share_fusion_attention=False))) == 8_799_622
  spa = abstract_variables(D.SpatialDiscriminator(), (128, 128))
  fre = abstract_variables(D.FrequencyDiscriminator(), (128, 128))
  assert count_params(spa) == 5_485_921
  assert count_params(fre) == 3_920_257
  # D_fre sees 6 x 128 x 65 and pools to 8 x 5: its MFM-linear takes 5120 inputs.
  assert fre["params"]["classifier"]["layers_0"]["filter"]["kernel"].shape == (5120, 512)
  assert spa["params"]["classifier"]["layers_0"]["filter"]["kernel"].shape == (8192, 512)


def test_non_square_input_and_jit(golden_model):
  model, variables = golden_model
  x = jax.random.uniform(jax.random.key(1), (1, 32, 48, 3))
  out, fre = jax.jit(model.apply)(variables, x)
  assert out.shape == fre.shape == (1, 32, 48, 3)
  assert np.isfinite(out).all() and np.isfinite(fre).all()
  # Eager and jitted agree.
  out_eager, _ = model.apply(variables, x)
  np.testing.assert_allclose(out, out_eager, atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "black"])
def test_gradients_finite_through_both_outputs(golden_model, kind):
  model, variables = golden_model
  if kind == "black":  # an exactly-zero spectrum in the loss and the blocks' inputs
    x = jnp.zeros((1, 16, 16, 3))
  else:
    x = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))

  def loss(params, x):
    out, fre = model.apply({"params": params}, x)
    amp, pha = spectral.amplitude_phase(fre)
    return jnp.abs(out - 0.5).mean() + jnp.abs(fre - 0.5).mean() + 0.01 * (amp.mean() + pha.mean())

  value, (g_params, g_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(
      variables["params"], x)
  leaves = jax.tree_util.tree_leaves(g_params)
  assert np.isfinite(value)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert np.isfinite(g_x).all()
  # The gradient reaches both branches' parameters.
  assert np.abs(g_params["tail"]["layers_0"]["layers"]["kernel"]).sum() > 0
  assert np.abs(g_params["tail_fre"]["layers_0"]["layers"]["kernel"]).sum() > 0


def test_bfloat16_compute_with_float32_params(golden, golden_model):
  """bf16 compute is as close to float32 as the input's own bf16 rounding allows.

  The golden network (random weights) is chaotic: rounding only the input to
  bf16, in float32 compute, already moves the output by ~20% of its residual.
  bf16 compute must stay within 1.5x of that unavoidable error.
  """
  model, variables = golden_model
  bf16 = model.clone(dtype=jnp.bfloat16)
  out, fre = jax.jit(bf16.apply)(variables, golden["lr_up"])
  assert out.dtype == fre.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(
      init_generator(bf16, 0, (16, 16))))
  x_rounded = golden["lr_up"].astype(jnp.bfloat16).astype(np.float32)
  out_r, fre_r = jax.jit(model.apply)(variables, x_rounded)
  for got, rounded, ref in ((out, out_r, golden["img_out"]), (fre, fre_r, golden["img_fre"])):
    err = np.abs(np.asarray(got) - ref).mean()
    unavoidable = np.abs(np.asarray(rounded) - ref).mean()
    assert np.isfinite(err) and 1e-5 < err < 1.5 * unavoidable


def test_separate_attention_equals_shared_when_weights_equal(golden, golden_model,
                                                            golden_port_outputs):
  """share_fusion_attention=False uses `spa_att`; with spa_att := fre_att it equals the release."""
  model, variables = golden_model
  params = flax.core.unfreeze(variables["params"])
  for name, block in params["conv_fuse"].items():
    block["spa_att"] = jax.tree_util.tree_map(lambda a: a, block["fre_att"])
  paper = model.clone(share_fusion_attention=False)
  out, fre = jax.jit(paper.apply)({"params": params}, golden["lr_up"])
  np.testing.assert_allclose(out, golden_port_outputs[0], atol=1e-6)
  np.testing.assert_allclose(fre, golden_port_outputs[1], atol=1e-6)
  # Perturb the second attention: the spatial output changes, the frequency branch does not.
  block = params["conv_fuse"]["layers_13"]["spa_att"]
  block["project_out"]["kernel"] = block["project_out"]["kernel"] * 2.0
  out2, fre2 = jax.jit(paper.apply)({"params": params}, golden["lr_up"])
  assert np.abs(np.asarray(out2) - np.asarray(out)).max() > 1e-4
  np.testing.assert_allclose(fre2, fre, atol=0)


@pytest.mark.parametrize("shape, message", [
    ((32, 32, 3), "shape (B, H, W, 3)"),
    ((1, 32, 32, 1), "3 (RGB) channels"),
    ((1, 3, 32, 32), "looks like NCHW"),
    ((1, 36, 32, 3), "divisible by 8"),
    ((1, 32, 20, 3), "divisible by 8"),
])
def test_bad_input_shapes(golden_model, shape, message):
  model, variables = golden_model
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    model.apply(variables, jnp.zeros(shape))


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
  z = jnp.zeros((4,), jnp.complex64)
  g_amp = jax.grad(lambda r: spectral.amplitude(jax.lax.complex(r, r)).sum())(jnp.zeros(4))
  g_pha = jax.grad(lambda r: spectral.phase(jax.lax.complex(r, 0 * r)).sum())(jnp.zeros(4))
  assert np.array_equal(g_amp, np.zeros(4)) and np.array_equal(g_pha, np.zeros(4))
  assert np.array_equal(spectral.phase(z), np.zeros(4))


@pytest.mark.parametrize("key, kind", [("spa", "spatial"), ("fre", "frequency")])
def test_discriminator_golden_vectors(key, kind):
  """Both discriminators equal the release's classes on its golden vectors (1e-4).

  tests/fixtures/make_discriminator_golden.py ran the release's `network_9layers` and
  `network_9layers_fft` with seeded weights (rebuilt here from the stored names and
  shapes) on inputs chosen where the release is stable: D_fre's phase jumps by 2 pi
  where a spectrum bin crosses the negative real axis, so the script kept only inputs
  whose logits moved by less than 1e-5 under 1e-6 input noise.
  """
  with np.load(DISCRIMINATOR_GOLDEN) as d:
    names, shapes = list(d[f"{key}/names"]), [json.loads(s) for s in d[f"{key}/shapes"]]
    seed, gain = int(d["seed"]), float(d[f"{key}/gain"])
    x, want = d[f"{key}/input"].transpose(0, 2, 3, 1), d[f"{key}/output"]
  state_dict = seeded_release_weights(dict(zip(names, shapes)), seed, gain)
  module, variables = release_weights.load_release_discriminator(state_dict, kind)
  got = np.asarray(jax.jit(module.apply)(variables, x))
  assert abs(want[0] - want[1]) > 0.1  # the two images' logits differ by far more than the bar
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  with pytest.raises(release_weights.WeightFileError, match="missing .*classifier.2.bias"):
    release_weights.load_release_discriminator(
        {k: v for k, v in state_dict.items() if k != "classifier.2.bias"}, kind)


def test_max_pool_ceil_mode_matches_numpy():
  x = np.random.default_rng(2).normal(size=(1, 5, 7, 2)).astype(np.float32)
  y = np.asarray(D.max_pool_ceil(jnp.asarray(x)))
  assert y.shape == (1, 3, 4, 2)
  for i in range(3):
    for j in range(4):
      np.testing.assert_array_equal(y[0, i, j], x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max((0, 1)))


def test_discriminators_one_logit_per_image_and_use_their_input():
  x = jax.random.uniform(jax.random.key(3), (2, 128, 128, 3))
  for cls in (D.SpatialDiscriminator, D.FrequencyDiscriminator):
    variables = D.init_discriminator(cls(), 4)
    logits = jax.jit(cls().apply)(variables, x)
    assert logits.shape == (2,) and np.isfinite(logits).all()
    assert abs(float(logits[0] - logits[1])) > 0  # different images, different logits
    with pytest.raises(ValueError, match="takes"):
      cls().apply(variables, jnp.zeros((2, 128, 128, 1)))


def test_mfm_is_max_of_two_halves():
  mfm = D.MFM(4, 3, 1)
  x = jax.random.normal(jax.random.key(5), (1, 6, 6, 2))
  v = mfm.init(jax.random.key(6), x)
  conv = flax.linen.Conv(8, (3, 3), padding=((1, 1), (1, 1)))
  full = conv.apply({"params": v["params"]["filter"]}, x)
  np.testing.assert_allclose(mfm.apply(v, x), np.maximum(full[..., :4], full[..., 4:]), atol=1e-6)


def _init_rules_hold(params, bounds_from):
  """Every leaf is PyTorch's default init: constants exact, uniforms within (and filling) +-bound."""
  flat = flax.traverse_util.flatten_dict(params)
  kernels = {p[:-1]: v.shape for p, v in flat.items() if p[-1] == "kernel"}
  for path, value in flat.items():
    value = np.asarray(value)
    if path[-1] in ("kernel", "bias"):
      fan_in = np.prod(kernels[path[:-1]][:-1])
      bound = 1 / np.sqrt(fan_in)
      assert np.abs(value).max() <= bound * (1 + 1e-6), (bounds_from, path)
      if value.size >= 64:
        assert np.abs(value).max() > 0.8 * bound and value.std() > 0.4 * bound, (bounds_from, path)
    else:
      expected = {"weight": 0.25, "scale": 1.0, "temperature": 1.0}[path[-1]]
      np.testing.assert_array_equal(value, np.full(value.shape, expected, np.float32))


def test_host_init_follows_the_modules_initialisers():
  """`host_init` (fast) and `module.init` (the modules' own initialisers) agree leaf by leaf.

  Checked on one module of every kind the networks contain; the leaf kinds of the
  full generator and discriminators are a subset of these.
  """
  from sfmnet_jax.blocks import FreqBlock, FuseBlock, ResidualGroup  # noqa: I001
  modules = [(FuseBlock(8, num_heads=2), 2), (ResidualGroup(8, 1), 1), (FreqBlock(8), 1),
             (layers.Up(8), 1), (D.MFM(4, 3, 1), 1), (D.MFM(4, linear=True), 1)]
  covered = set()
  for module, n_inputs in modules:
    shape = (1, 8) if getattr(module, "linear", False) else (1, 8, 8, 8)
    xs = [jnp.zeros(shape)] * n_inputs
    with jax.disable_jit():
      reference = flax.core.unfreeze(module.init(jax.random.key(0), *xs)["params"])
    fast = layers.host_init(jax.eval_shape(module.init, jax.random.key(0), *xs)["params"], 0)
    assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(reference)
    _init_rules_hold(reference, "module.init")
    _init_rules_hold(fast, "host_init")
    other = layers.host_init(jax.eval_shape(module.init, jax.random.key(0), *xs)["params"], 1)
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, fast, other)))
    covered |= {p[-1] for p in flax.traverse_util.flatten_dict(fast)}
  for model, size in ((SFMNet(num_features=8), (16, 16)), (D.FrequencyDiscriminator(), (16, 16))):
    leaves = flax.traverse_util.flatten_dict(abstract_variables(model, size)["params"])
    assert {p[-1] for p in leaves} <= covered


def test_conv_in_parts_equals_the_split_whole():
  """`Conv(parts=2)` and `DepthwiseConv3x3` on the parts (the attention's k and v) give
  the split of the whole conv's output bit for bit, from the same parameters."""
  x = np.random.default_rng(8).standard_normal((2, 5, 7, 8)).astype(np.float32)
  whole = layers.Conv(12, 1, use_bias=False)
  params = whole.init(jax.random.key(0), x)
  dw = layers.DepthwiseConv3x3()
  dw_params = dw.init(jax.random.key(1), np.zeros((1, 4, 4, 12), np.float32))
  y = whole.apply(params, x)
  want = jnp.split(dw.apply(dw_params, y), 2, axis=-1)
  parts = layers.Conv(12, 1, use_bias=False, parts=2).apply(params, x)
  np.testing.assert_array_equal(jnp.concatenate(parts, -1), y)
  for got, ref in zip(dw.apply(dw_params, parts), want):
    np.testing.assert_array_equal(got, ref)
  with pytest.raises(ValueError, match="parts > 1"):
    layers.Conv(12, 3, use_bias=False, parts=2).init(jax.random.key(0), x)


def test_depthwise_conv_and_its_gradient_equal_xla_grouped_conv():
  x = jax.random.normal(jax.random.key(7), (2, 9, 7, 5))
  k = jax.random.normal(jax.random.key(8), (3, 3, 5))
  g = jax.random.normal(jax.random.key(9), (2, 9, 7, 5))

  def grouped(x, k):
    return jax.lax.conv_general_dilated(x, k[:, :, None, :], (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=5)

  y, vjp = jax.vjp(ops.depthwise3x3, x, k)
  y_ref, vjp_ref = jax.vjp(grouped, x, k)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_channel_attention_equals_per_head_reference():
  """The fused (C x C, block-masked) attention equals the release's per-head computation."""
  c, heads = 16, 4
  att = ChannelAttention(c, heads)
  x = jax.random.normal(jax.random.key(10), (2, 8, 6, c))
  g = jax.random.normal(jax.random.key(11), (2, 8, 6, c))
  params = layers.host_init(jax.eval_shape(att.init, jax.random.key(0), x, g)["params"], 3)
  params["temperature"] = np.array([0.5, 1.0, 2.0, 3.0], np.float32).reshape(heads, 1, 1)
  got = np.asarray(att.apply({"params": params}, x, g), np.float64)

  # Reference in numpy, NCHW as in PyTorch (einops 'b (head c) h w -> b head c (h w)').
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
  to_heads = lambda t: t.transpose(0, 3, 1, 2).reshape(2, heads, c // heads, -1)  # noqa: E731
  q, k, v = to_heads(q), to_heads(k), to_heads(v)
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
  logits = q @ k.transpose(0, 1, 3, 2) * p["temperature"][None]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = (attn @ v).reshape(2, c, 8, 6).transpose(0, 2, 3, 1)
  want = conv1x1(out, p["project_out"]["kernel"])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_remat_same_gradients_and_less_stored_for_the_backward():
  """`recompute_in_backward` (what `remat=True` wraps every block in): the same gradients,
  the compiled backward keeps under half the bytes, and the recomputation's convs use
  the algorithm the forward was traced with.

  XLA:CPU would merge `nn.remat`'s recomputation back into the forward (it drops the
  optimisation barriers), so the buffers are compared, not only the numbers. A chain of
  four ResidualGroups keeps the compile short; the model's flag only picks the wrapper.
  """
  from sfmnet_jax.blocks import ResidualGroup

  class Chain(flax.linen.Module):
    remat: bool

    @flax.linen.compact
    def __call__(self, x):
      group = layers.recompute_in_backward(ResidualGroup) if self.remat else ResidualGroup
      for _ in range(4):
        x = group(8, 1)(x)
      return x

  x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 8))
  params = Chain(False).init(jax.random.key(0), x)["params"]
  grads, temp = {}, {}
  for remat in (False, True):
    chain = Chain(remat)

    def loss(p, x, chain=chain):
      with cpu_kernels.conv_algorithm("winograd"):
        return jnp.abs(chain.apply({"params": p}, x) - 0.5).mean()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    grads[remat] = compiled(params, x)
    if cpu_kernels.available():  # the recomputed forward's convs use the forward's algorithm
      assert 'custom_call_target="sfmnet_conv3x3_winograd"' in compiled.as_text()
      assert 'custom_call_target="sfmnet_conv3x3"' not in compiled.as_text()
  scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[False]))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0),
      grads[False], grads[True])
  assert temp[True] < 0.5 * temp[False], temp
  # The model with remat has the same parameters as without.
  shapes = lambda m: jax.tree_util.tree_map(  # noqa: E731
      lambda a: a.shape, abstract_variables(m, (16, 16))["params"])
  assert shapes(SFMNet(num_features=8, remat=True)) == shapes(SFMNet(num_features=8))
