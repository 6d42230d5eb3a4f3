"""The plain Flax generator against the release: golden outputs and, in exact mode, the
PSNR-stage loss and gradients the release computes; shapes, dtypes, bad inputs."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import GRADIENT_GOLDEN, median_relative_error, release_gradients, release_loss
from sfmnet_jax import SFMNet, count_params, init_generator
from sfmnet_jax.model import abstract_variables, spectral
from sfmnet_jax.model import discriminators as D
from sfmnet_jax.weights.release import params_to_state_dict


def test_golden_vector_both_outputs(golden, golden_model):
  """The release's two outputs on its golden vector (C=16, 2 x 32 x 32), XLA's ops only."""
  model, variables = golden_model
  out, fre = jax.jit(model.apply)(variables, golden["lr_up"])
  assert out.shape == fre.shape == (2, 32, 32, 3) and out.dtype == fre.dtype == jnp.float32
  np.testing.assert_allclose(out, golden["img_out"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(fre, golden["img_fre"], atol=1e-4, rtol=0)
  # The outputs are not trivially the input: the network's residual matters.
  assert np.abs(golden["img_out"] - golden["lr_up"]).max() > 1e-2


@pytest.mark.parametrize("transform", ["fft", "dft"])
def test_exact_mode_loss_and_gradients_equal_the_release(golden_model, transform):
  """The PSNR-stage loss and its gradient for every parameter tensor, made by the release
  (tests/fixtures/make_gradient_golden.py, at an input where the release is stable), with
  XLA's ops, the FreqBlocks' transforms by FFT or by DFT products (what TPUs run): the
  median over tensors of |g - g_release| / |g_release| is within 1e-5. (The golden
  vector's own input sits at phase jumps, where any two numerical paths part:
  tests/export/test_export.py.)"""
  model, variables = golden_model
  model = model.clone(spectral_transform=transform)
  lr_up, hr, want = release_gradients()
  (loss, terms), grads = _psnr_loss_and_grads(model, variables["params"], lr_up, hr)
  want_loss, want_terms = release_loss()
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
  for name, value in want_terms.items():
    np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)
  got = params_to_state_dict(grads)
  assert set(got) == set(want)  # every parameter the release trains (spa_att is unused)
  assert median_relative_error(got, want) <= 1e-5
  # The reference differs from zero and from the gradient of another loss.
  other = params_to_state_dict(_psnr_loss_and_grads(model, variables["params"], lr_up, lr_up)[1])
  assert median_relative_error(other, want) > 1e-2


def _psnr_loss_and_grads(model, params, lr_up, hr):
  from sfmnet_jax.training import losses  # pylint: disable=import-outside-toplevel

  def loss_fn(p):
    out, fre = model.apply({"params": p}, lr_up)
    return losses.reconstruction_losses(out, fre, hr, 0.01)

  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def test_gradient_golden_is_from_a_stable_input():
  """The fixture records the seed its stability check accepted (the file says how)."""
  with np.load(GRADIENT_GOLDEN) as d:
    assert int(d["seed"]) >= 0 and d["input/lr_up"].shape == (2, 3, 16, 16)


def test_parameter_counts_match_release():
  assert count_params(abstract_variables(SFMNet())) == 8_545_942
  assert count_params(abstract_variables(SFMNet(share_fusion_attention=False))) == 8_799_622
  spa = abstract_variables(D.SpatialDiscriminator(), (128, 128))
  fre = abstract_variables(D.FrequencyDiscriminator(), (128, 128))
  assert count_params(spa) == 5_485_921
  assert count_params(fre) == 3_920_257
  # D_fre sees 6 x 128 x 65 and pools to 8 x 5: its MFM-linear takes 5120 inputs.
  assert fre["params"]["classifier"]["layers_0"]["filter"]["kernel"].shape == (5120, 512)
  assert spa["params"]["classifier"]["layers_0"]["filter"]["kernel"].shape == (8192, 512)


def test_init_is_the_modules_initialisers():
  """`init_generator` is `model.init`'s variables: its tree, shapes and dtypes, seeded,
  PyTorch's bounds, constants exact."""
  model = SFMNet(num_features=8, num_resblocks=1)
  a, b = init_generator(model, 0)["params"], init_generator(model, 1)["params"]
  shapes = lambda t: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
  assert shapes(a) == shapes(abstract_variables(model)["params"])  # eval_shape(model.init)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, init_generator(model, 0)["params"])
  flat = flax.traverse_util.flatten_dict(a)
  kernel = np.asarray(flat[("head", "layers_0", "layers", "kernel")])
  assert np.abs(kernel).max() <= 1 / np.sqrt(27) and kernel.std() > 0.4 / np.sqrt(27)
  assert float(flat[("head", "layers_0", "act", "weight")][0]) == 0.25
  assert not np.array_equal(kernel, flax.traverse_util.flatten_dict(b)[
      ("head", "layers_0", "layers", "kernel")])


def test_non_square_input_and_jit(golden_model):
  model, variables = golden_model
  x = jax.random.uniform(jax.random.key(1), (1, 32, 48, 3))
  out, fre = jax.jit(model.apply)(variables, x)
  assert out.shape == fre.shape == (1, 32, 48, 3)
  assert np.isfinite(out).all() and np.isfinite(fre).all()
  out_eager, _ = model.apply(variables, x)  # eager and jitted agree
  np.testing.assert_allclose(out, out_eager, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(model, params, x):
  """A loss through both outputs and the phase of the frequency branch, its value and its
  gradients for the parameters and the input (one compiled program per model)."""

  def loss(params, x):
    out, fre = model.apply({"params": params}, x)
    amp, pha = spectral.amplitude_phase(fre)
    return jnp.abs(out - 0.5).mean() + jnp.abs(fre - 0.5).mean() + 0.01 * (amp.mean() + pha.mean())

  return jax.value_and_grad(loss, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("kind", ["random", "black"])
def test_gradients_finite_through_both_outputs(golden_model, kind):
  model, variables = golden_model
  if kind == "black":  # an exactly-zero spectrum in the loss and the blocks' inputs
    x = jnp.zeros((1, 16, 16, 3))
  else:
    x = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
  value, (g_params, g_x) = _loss_and_grads(model, variables["params"], x)
  assert np.isfinite(value)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(g_params))
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
      abstract_variables(bf16, (16, 16))))
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
  for block in params["conv_fuse"].values():
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


def test_remat_same_gradients_and_parameters(golden, golden_model):
  """`remat=True` (nn.remat around each FreqBlock, ResidualGroup and FuseBlock): the same
  parameters and, to rounding, the same loss and gradients."""
  model, variables = golden_model
  x = jnp.asarray(golden["lr_up"][:1, :16, :16])
  (v_plain, (plain, _)), (v_remat, (remat, _)) = (
      _loss_and_grads(m, variables["params"], x) for m in (model, model.clone(remat=True)))
  assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(remat)
  np.testing.assert_allclose(v_plain, v_remat, rtol=1e-5)
  scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(plain))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale),
                         plain, remat)
