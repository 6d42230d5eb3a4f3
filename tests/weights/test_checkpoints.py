"""Orbax checkpoints written before the plain-Flax redesign (commit 7bee3e9) still load."""

import jax
import numpy as np
import pytest

from helpers import FIXTURES, LEGACY_CHECKPOINT
from sfmnet_jax.weights import checkpoints

LEGACY = FIXTURES / "legacy_checkpoint.npz"


@pytest.fixture(scope="module")
def legacy():
  with np.load(LEGACY) as d:
    return {k: d[k] for k in d.files}


def test_legacy_checkpoint_loads_for_evaluation_and_inference(legacy):
  """`load_generator` (evaluate.py, sfmnet-infer, init_from) reads the EMA and raw weights of
  a workdir the old code wrote; the forward equals what the old code computed from them."""
  for use_ema, key in ((True, "ema"), (False, "params")):
    model, variables, info = checkpoints.load_generator(str(LEGACY_CHECKPOINT), use_ema=use_ema,
                                                        conv_impl="xla")
    assert info["step"] == 2 and info["ema"] == use_ema and info["scale"] == 4
    assert (model.num_features, model.num_resblocks) == (8, 1)
    out, fre = jax.jit(model.apply)(variables, legacy["input"])
    np.testing.assert_allclose(out, legacy[f"{key}/img_out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(fre, legacy[f"{key}/img_fre"], atol=1e-5, rtol=0)
  assert np.abs(legacy["ema/img_out"] - legacy["params/img_out"]).max() > 1e-6  # two weight sets


@pytest.mark.parametrize("flatten", [False, True])
def test_legacy_train_state_resumes_with_its_optimizer_moments(legacy, tmp_path, flatten):
  """The old code kept Adam's moments as one flat vector per network; `restore_state`
  unravels them into the parameter trees (optimizer.flatten=False) or keeps the vector
  (True), equal to what the old code's layout gave; each layout restores the other's."""
  from configs import demo
  from sfmnet_jax.training import state as training
  cfg = demo.get_config()
  cfg.model.num_features, cfg.model.num_resblocks, cfg.ema_decay = 8, 1, 0.9
  cfg.optimizer.flatten = flatten
  state, _, _ = training.create_state(cfg, training.build_model(cfg))
  mngr = checkpoints.manager(str(LEGACY_CHECKPOINT), create=False)
  restored, meta = training.restore_state(mngr, state)
  assert int(restored.step) == int(legacy["step"]) == 2
  assert meta["data"]["step"] == 2 and meta["stage"] == "psnr"
  adam = restored.generator["opt_state"][0]
  assert int(adam.count) == int(legacy["adam_count"])
  params = restored.generator["params"]
  for moment, tree in (("mu", adam.mu), ("nu", adam.nu)):
    if flatten:
      assert np.ndim(tree) == 1 and np.size(tree) == sum(x.size for x in jax.tree.leaves(params))
      tree = jax.tree.unflatten(jax.tree.structure(params), np.split(
          tree, np.cumsum([x.size for x in jax.tree.leaves(params)])[:-1]))
      tree = jax.tree.map(lambda v, p: v.reshape(p.shape), tree, params)
    for path in ("head/layers_0/layers/kernel", "conv_fuse/layers_3/fre_att/temperature"):
      node = tree
      for part in path.split("/"):
        node = node[part]
      np.testing.assert_array_equal(node, legacy[f"{moment}/{path}"])
  assert jax.tree.structure(params) == jax.tree.structure(state.generator["params"])
  # Saved again by this code, it restores to itself and into the other moment layout.
  new = checkpoints.manager(str(tmp_path / "new"))
  checkpoints.save(new, 2, restored, meta)
  new.wait_until_finished()
  again, _ = training.restore_state(new, state)
  jax.tree.map(np.testing.assert_array_equal, again, restored)
  cfg.optimizer.flatten = not flatten
  other_template, _, _ = training.create_state(cfg, training.build_model(cfg))
  other, _ = training.restore_state(new, other_template)
  back_mu = other.generator["opt_state"][0].mu
  flat_mu = adam.mu if flatten else back_mu
  tree_mu = back_mu if flatten else adam.mu
  np.testing.assert_array_equal(
      flat_mu, np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree_mu)]))
