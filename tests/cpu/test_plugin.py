"""The CPU plugin's seam (`sfmnet_jax.cpu.accelerate`): where it applies, what it computes
(against the plain Flax model and the release), and its host-side initialiser."""

import collections
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import median_relative_error, release_gradients
from sfmnet_jax import cpu
from sfmnet_jax.cpu import init as cpu_init
from sfmnet_jax.cpu import kernels, ops
from sfmnet_jax.model import SFMNet, abstract_variables, layers
from sfmnet_jax.model.generator import init_variables
from sfmnet_jax.model import discriminators as D
from sfmnet_jax.model.blocks import ChannelAttention, FreqBlock, FuseBlock, ResidualGroup
from sfmnet_jax.weights.release import params_to_state_dict

needs_kernels = pytest.mark.skipif(not kernels.available(),
                                   reason="the C++ kernels could not be built here")


def _targets(text):
  return collections.Counter(re.findall(r'custom_call_target="(sfmnet_\w+)"', text))


@needs_kernels
def test_accelerate_applies_on_the_cpu_backend_only(monkeypatch):
  model = SFMNet(num_features=8, num_resblocks=1, remat=True)
  fast = cpu.accelerate(model)
  assert isinstance(fast, SFMNet) and type(fast) is not SFMNet
  assert cpu.accelerate(fast) is fast
  # Same fields (remat becomes the interceptor's recomputation) and the same parameters.
  assert (fast.num_features, fast.num_resblocks, fast.remat, fast.recompute) == (8, 1, False, True)
  shapes = lambda m: jax.tree_util.tree_map(lambda a: a.shape, abstract_variables(m))  # noqa: E731
  assert shapes(fast) == shapes(model)
  # The plain module itself wherever XLA's ops run.
  assert cpu.accelerate(model, "xla") is model
  for platform in ("cuda", "tpu", "rocm"):
    assert cpu.accelerate(model, "auto", platform=platform) is model
    with pytest.raises(ValueError, match="CPU backend only"):
      cpu.accelerate(model, "kernels", platform=platform)
  assert cpu.accelerate(model.clone(dtype=jnp.bfloat16)) == model.clone(dtype=jnp.bfloat16)
  assert cpu.accelerate(D.SpatialDiscriminator()) != D.SpatialDiscriminator()
  with pytest.raises(ValueError, match="unknown conv_impl"):
    cpu.accelerate(model, "cudnn")
  with pytest.raises(ValueError, match="unknown conv algorithm"):
    cpu.accelerate(model, conv_algorithm="fft")
  monkeypatch.setenv("SFMNET_CPU_KERNELS", "0")  # the switch to plain XLA
  assert cpu.accelerate(model) is model and cpu.accelerate(model, "kernels") is model


@needs_kernels
def test_every_conv_and_the_attention_run_on_the_kernels(golden_model):
  """Forward and backward of the accelerated generator hold no XLA convolution or batched
  dot of the attention: every conv (3x3, 1x1, depthwise), bias gradient and attention
  product is a C++ kernel. The plain model is XLA's ops only."""
  model, variables = golden_model
  x = jnp.zeros((1, 16, 16, 3))

  def hlo(m):
    loss = lambda p: sum(jnp.sum(o) for o in m.apply({"params": p}, x))  # noqa: E731
    return jax.jit(jax.grad(loss)).lower(variables["params"]).as_text("hlo")

  plain, fast = hlo(model), hlo(cpu.accelerate(model))
  assert not _targets(plain) and "convolution(" in plain
  assert "convolution(" not in fast
  assert set(_targets(fast)) >= {
      "sfmnet_conv3x3", "sfmnet_conv3x3_winograd", "sfmnet_conv3x3_kernel_grad",
      "sfmnet_conv1x1", "sfmnet_conv1x1_kernel_grad", "sfmnet_depthwise3x3",
      "sfmnet_depthwise3x3_kernel_grad", "sfmnet_channel_sum"}


@needs_kernels
def test_auto_conv_algorithm_keeps_winograd_out_of_the_frequency_branch():
  """`conv_algorithm="auto"` (the default): Winograd's forward convs only in the spatial
  branch, whose values reach no phase (F(4x4, 3x3) at the 32 x 32 level, F(2x2, 3x3)
  below); the frequency branch sums directly. "direct" uses no Winograd forward,
  "winograd" and "winograd4" their own form in both branches."""
  from sfmnet_jax.benchmarks import profile

  model = SFMNet(num_features=8, num_resblocks=1)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  kinds = ("sfmnet_conv3x3", "sfmnet_conv3x3_winograd", "sfmnet_conv3x3_winograd4")
  lowered = {}
  for algorithm in ("auto", "direct", "winograd", "winograd4"):
    fast = cpu.accelerate(model, conv_algorithm=algorithm)
    lowered[algorithm] = jax.jit(fast.apply).lower(abstract_variables(model, (32, 32)), x)
  # The compiled module names each call's block (the lowered one has no metadata).
  table = profile.op_table(lowered["auto"].compile().as_text()).values()
  placed = {kind: {"fre" if "_fre" in block else "spa" for k, block in table if k == kind}
            for kind in kinds}
  # The heads (3 -> C) and tails (C -> 3) sum directly in both branches whatever the option.
  assert placed == {kinds[0]: {"fre", "spa"}, kinds[1]: {"spa"}, kinds[2]: {"spa"}}, placed
  count = {a: {kind: _targets(lowered[a].as_text("hlo"))[kind] for kind in kinds[1:]}
           for a in lowered}
  f2, f4 = kinds[1:]
  assert count["direct"] == {f2: 0, f4: 0}, count
  assert 0 < count["auto"][f2] < count["winograd"][f2] and count["winograd"][f4] == 0, count
  assert 0 < count["auto"][f4] < count["winograd4"][f4] and count["winograd4"][f2] == 0, count


@needs_kernels
@pytest.mark.parametrize("algorithm", ["auto", "direct"])
def test_golden_vector_with_the_kernels(golden, golden_model, algorithm):
  """The kernels' convs ("auto": Winograd outside the frequency branch, and "direct") with
  XLA's phases reproduce the release's golden outputs. (The golden vector's last FreqBlocks
  hold a bin 4e-6 from the negative real axis: the polynomial phases, a few 1e-7 off libm's,
  put it on either side depending on XLA's optimisation flags; the next test checks them.)"""
  model, variables = golden_model
  out, fre = jax.jit(cpu.accelerate(model, conv_algorithm=algorithm, trig="xla").apply)(
      variables, golden["lr_up"])
  np.testing.assert_allclose(out, golden["img_out"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(fre, golden["img_fre"], atol=1e-4, rtol=0)


@needs_kernels
def test_default_mode_forward_near_the_plain_model_at_a_stable_input():
  """The default CPU mode (kernels, Winograd outside the frequency branch, polynomial phases)
  against the plain Flax model, at an input whose output moves by < 1e-5 under 1e-6 noise
  (checked here, so that a phase jump cannot hide behind the comparison)."""
  model = SFMNet(num_features=8, num_resblocks=1, num_heads=2)
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
  variables = {"params": cpu_init.host_init(abstract_variables(model, (16, 16))["params"], 3)}
  plain = jax.jit(model.apply)
  ref = np.asarray(plain(variables, x)[0])
  noisy = np.asarray(plain(variables, x + 1e-6 * rng.standard_normal(x.shape))[0])
  assert np.abs(noisy - ref).max() < 1e-5, "not a stable input: pick another seed"
  fast = jax.jit(cpu.accelerate(model).apply)
  out, fre = fast(variables, x)
  want_out, want_fre = plain(variables, x)
  err = max(np.abs(out - want_out).max(), np.abs(fre - want_fre).max())
  assert 0 < err < 1e-4, err  # different rounding, same values
  with pytest.raises(ValueError, match="unknown trig"):
    cpu.accelerate(model, trig="libm")


@needs_kernels
def test_default_mode_gradients_near_the_release(golden_model):
  """The default CPU mode's PSNR-stage gradients against the release's (the exact mode's
  bar is 1e-5, `model/test_generator.py`): hand-written gradients and Winograd round
  differently, which SFMNet's phase amplifies; README "Numerics" gives the figure."""
  from sfmnet_jax.training import losses
  model, variables = golden_model
  lr_up, hr, want = release_gradients()
  fast = cpu.accelerate(model)

  def loss_fn(p):
    out, fre = fast.apply({"params": p}, lr_up)
    return losses.reconstruction_losses(out, fre, hr, 0.01)[0]

  got = params_to_state_dict(jax.jit(jax.grad(loss_fn))(variables["params"]))
  assert median_relative_error(got, want) < 1e-4


class _Blocks(nn.Module):
  """SFMNet's spatial blocks at C=32 (every C++ kernel: 3x3 from and to RGB, 3x3, 1x1,
  depthwise, the attention's products), without the FreqBlock, whose phase makes
  gradients unstable."""

  @nn.compact
  def __call__(self, x):
    c = 32
    s = layers.ConvAct(c, 3, act="prelu")(x)
    d = layers.Down(c)(s)
    g = ResidualGroup(c)(d)
    u = layers.Up(c)(g)
    f = FuseBlock(c)(u, s)
    return layers.ConvAct(3, 3)(f)


def _block_gradients(model, params, noise=0.0):
  rng = np.random.default_rng(5)
  x = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  hr = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  x = x + np.float32(noise) * rng.standard_normal(x.shape).astype(np.float32)
  grad = jax.jit(jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - hr) ** 2)))
  return {"/".join(k): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(grad(params)).items()}


@needs_kernels
def test_block_gradients_equal_xla_gradients():
  """Every parameter's gradient through SFMNet's spatial blocks with the kernels matches
  XLA's autodiff of the plain blocks, with direct and with Winograd convs. The input is
  first shown to be stable for XLA itself (1e-6 noise moves no gradient by more than 1e-5
  of its scale)."""
  plain = _Blocks()
  params = cpu_init.host_init(abstract_variables(plain, (16, 16))["params"], 0)
  ref, moved = _block_gradients(plain, params), _block_gradients(plain, params, 1e-6)
  for algorithm, tol in (("direct", 1e-5), ("winograd", 2e-5), ("winograd4", 2e-5)):
    got = _block_gradients(cpu.accelerate(plain, conv_algorithm=algorithm), params)
    assert set(got) == set(ref)
    for name, g in got.items():
      scale = float(np.abs(ref[name]).max()) + 1e-12
      np.testing.assert_allclose(moved[name], ref[name], rtol=0, atol=1e-5 * scale,
                                 err_msg=f"{name}: the reference itself is unstable here")
      np.testing.assert_allclose(g, ref[name], rtol=0, atol=tol * scale,
                                 err_msg=f"{algorithm}: {name}")


@needs_kernels
def test_attention_in_gram_form_equals_the_plain_module():
  """The interceptor's attention (one block-masked C x C product per image, the kv conv as
  its k and v halves) gives the plain per-head module's values and gradients."""
  c, heads = 16, 4

  class Attend(nn.Module):
    @nn.compact
    def __call__(self, x, g):
      return ChannelAttention(c, heads)(x, g)

  x = jax.random.normal(jax.random.key(10), (2, 8, 6, c))
  g = jax.random.normal(jax.random.key(11), (2, 8, 6, c))
  plain = Attend()
  params = plain.init(jax.random.key(3), x, g)["params"]
  params = jax.tree_util.tree_map(lambda a: a, params)
  params["ChannelAttention_0"]["temperature"] = np.array([0.5, 1.0, 2.0, 3.0],
                                                         np.float32).reshape(heads, 1, 1)
  fast = cpu.accelerate(plain)

  def run(m):
    f = lambda p, x, g: jnp.sum(jnp.tanh(m.apply({"params": p}, x, g)))  # noqa: E731
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(params, x, g)

  assert "sfmnet_conv1x1_kernel_grad" in jax.jit(fast.apply).lower({"params": params}, x, g).as_text(
      "hlo")
  (v1, g1), (v2, g2) = run(plain), run(fast)
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(np.abs(b).max()), rtol=0)


@needs_kernels
def test_recompute_same_gradients_and_less_stored_for_the_backward():
  """With remat, the plugin recomputes each block in the backward pass (XLA:CPU merges
  `nn.remat`'s recomputation back into the forward): the same gradients, under half the
  temp bytes of the compiled backward, and the recomputation's convs use the forward's
  algorithm. A chain of four ResidualGroups keeps the compile short."""

  class Chain(nn.Module):
    remat: bool

    @nn.compact
    def __call__(self, x):
      group = nn.remat(ResidualGroup) if self.remat else ResidualGroup
      for _ in range(4):
        x = group(8, 1)(x)
      return x

  x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 8))
  params = cpu_init.host_init(jax.eval_shape(Chain(False).init, jax.random.key(0), x)["params"], 0)
  grads, temp = {}, {}
  for remat in (False, True):
    fast = cpu.accelerate(Chain(remat), conv_algorithm="winograd")
    assert fast.recompute == remat
    loss = lambda p, x, m=fast: jnp.abs(m.apply({"params": p}, x) - 0.5).mean()  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
    grads[remat] = compiled(params, x)
    assert 'custom_call_target="sfmnet_conv3x3_winograd"' in compiled.as_text()
    assert 'custom_call_target="sfmnet_conv3x3"' not in compiled.as_text()
  scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[False]))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0),
      grads[False], grads[True])
  assert temp[True] < 0.5 * temp[False], temp


def test_depthwise_op_and_its_gradient_equal_xla_grouped_conv():
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


def _init_rules_hold(params, bounds_from):
  """Every leaf is PyTorch's default init: constants exact, uniforms within (and filling) +-bound."""
  flat = flax.traverse_util.flatten_dict(params)
  kernel_shapes = {p[:-1]: v.shape for p, v in flat.items() if p[-1] == "kernel"}
  for path, value in flat.items():
    value = np.asarray(value)
    if path[-1] in ("kernel", "bias"):
      bound = 1 / np.sqrt(np.prod(kernel_shapes[path[:-1]][:-1]))
      assert np.abs(value).max() <= bound * (1 + 1e-6), (bounds_from, path)
      if value.size >= 64:
        assert np.abs(value).max() > 0.8 * bound and value.std() > 0.4 * bound, (bounds_from, path)
    else:
      expected = {"weight": 0.25, "scale": 1.0, "temperature": 1.0}[path[-1]]
      np.testing.assert_array_equal(value, np.full(value.shape, expected, np.float32))


def test_host_init_follows_the_modules_initialisers():
  """`host_init` (the CPU's initialiser) and `module.init` (the modules' own initialisers)
  agree leaf by leaf on one module of every kind the networks contain; the leaf kinds of
  the full generator and discriminators are a subset of these."""
  modules = [(FuseBlock(8, num_heads=2), 2), (ResidualGroup(8, 1), 1), (FreqBlock(8), 1),
             (layers.Up(8), 1), (D.MFM(4, 3, 1), 1), (D.MFM(4, linear=True), 1)]
  covered = set()
  for module, n_inputs in modules:
    shape = (1, 8) if getattr(module, "linear", False) else (1, 8, 8, 8)
    xs = [jnp.zeros(shape)] * n_inputs
    reference = flax.core.unfreeze(module.lazy_init(  # the initialisers, op by op
        jax.random.key(0), *[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs])["params"])
    abstract = jax.eval_shape(module.init, jax.random.key(0), *xs)["params"]
    fast = cpu_init.host_init(abstract, 0)
    assert jax.tree_util.tree_structure(fast) == jax.tree_util.tree_structure(reference)
    _init_rules_hold(reference, "module.init")
    _init_rules_hold(fast, "host_init")
    other = cpu_init.host_init(abstract, 1)
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, fast, other)))
    covered |= {p[-1] for p in flax.traverse_util.flatten_dict(fast)}
  for model, size in ((SFMNet(num_features=8), (16, 16)), (D.FrequencyDiscriminator(), (16, 16))):
    leaves = flax.traverse_util.flatten_dict(abstract_variables(model, size)["params"])
    assert {p[-1] for p in leaves} <= covered



@needs_kernels
def test_an_accelerated_module_initialises_on_the_host():
  """The accelerated module's `lazy_init` and `init` (what `init_variables` and Flax call)
  are `host_init` seeded by the key's bits; the plain module's are its own initialisers."""
  model = SFMNet(num_features=8, num_resblocks=1)
  fast = cpu.accelerate(model)
  seed = np.asarray(jax.random.key_data(jax.random.key(3))).ravel().tolist()
  want = cpu_init.host_init(abstract_variables(model, (8, 8))["params"], seed)
  x = jnp.zeros((1, 8, 8, 3))
  for got in (init_variables(fast, 3)["params"], fast.init(jax.random.key(3), x)["params"]):
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  plain = init_variables(model, 3)["params"]
  assert not np.array_equal(plain["head"]["layers_0"]["layers"]["kernel"],
                            want["head"]["layers_0"]["layers"]["kernel"])
