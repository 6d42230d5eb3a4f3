"""Loading, checking, converting and exporting the release's weights."""

import pickle
import sys

import jax
import numpy as np
import pytest

from sfmnet_jax import SFMNet, WeightFileError, count_params, load_release_weights
from sfmnet_jax.cpu.init import host_init
from sfmnet_jax.model import abstract_variables
from sfmnet_jax.weights import checkpoints, convert, torch_pickle
from sfmnet_jax.weights import release as release_weights

from helpers import FIXTURES, GOLDEN


def _save_npz(path, state_dict, prefix=""):
  np.savez(path, **{prefix + k: v for k, v in state_dict.items()})
  return path


def test_golden_pth_read_without_torch_matches_npz(golden, golden_model, golden_port_outputs,
                                                   monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  model, variables = load_release_weights(FIXTURES / "sfmnet_w16_s32.pth")
  _, ref_variables = golden_model
  same = jax.tree_util.tree_map(np.array_equal, variables, ref_variables)
  assert all(jax.tree_util.tree_leaves(same))
  out, _ = jax.jit(model.apply)(variables, golden["lr_up"])
  np.testing.assert_allclose(out, golden_port_outputs[0], atol=1e-6)


def test_release_state_dict_counts_and_export_roundtrip(golden):
  sd = golden["state_dict"]
  spa_att = sum(v.size for k, v in sd.items() if ".spa_att." in k)
  # The port (shared attention) has every release parameter but spa_att.
  model, variables = load_release_weights(GOLDEN)
  assert count_params(variables) == sum(v.size for v in sd.values()) - spa_att
  exported = release_weights.params_to_state_dict(variables["params"])
  assert set(exported) == {k for k in sd if ".spa_att." not in k}
  for k, v in exported.items():
    np.testing.assert_array_equal(v, sd[k])
  # What the release's strict load_state_dict takes: every name of its state_dict, in its
  # shapes, the unused spa_att as copies of fre_att (a paper-variant export keeps its own).
  loadable = release_weights.release_loadable(exported)
  assert {k: v.shape for k, v in loadable.items()} == {k: v.shape for k, v in sd.items()}
  np.testing.assert_array_equal(loadable["conv_fuse.3.spa_att.q.weight"],
                                sd["conv_fuse.3.fre_att.q.weight"])
  assert release_weights.release_loadable(sd) == sd
  # At the release size: 8,799,622 values, 253,680 of them in spa_att.
  full = SFMNet(share_fusion_attention=False)
  shapes = abstract_variables(full)["params"]
  names = release_weights.params_to_state_dict(
      jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes))
  assert sum(v.size for v in names.values()) == 8_799_622
  assert sum(v.size for k, v in names.items() if ".spa_att." in k) == 253_680


def test_paper_variant_loads_spa_att(golden):
  model, variables = load_release_weights(GOLDEN, share_fusion_attention=False)
  assert not model.share_fusion_attention
  np.testing.assert_array_equal(
      variables["params"]["conv_fuse"]["layers_5"]["spa_att"]["q"]["kernel"],
      golden["state_dict"]["conv_fuse.5.spa_att.q.weight"].transpose(2, 3, 1, 0))


def test_architecture_inferred_from_shapes(tmp_path):
  model = SFMNet(num_features=8, num_resblocks=3)
  params = host_init(abstract_variables(model)["params"], 0)
  path = _save_npz(tmp_path / "w.npz", release_weights.params_to_state_dict(params))
  loaded, variables = load_release_weights(path)
  assert (loaded.num_features, loaded.num_resblocks) == (8, 3)
  assert count_params(variables) == count_params(params)


def test_missing_unexpected_and_mismatched_keys_are_listed(golden, tmp_path):
  sd = dict(golden["state_dict"])
  del sd["conv_fuse.2.fuse.1.bias"]
  del sd["up2_fre.0.2.weight"]
  sd["extra.layer.weight"] = np.zeros((3, 3), np.float32)
  sd["tail.0.layers.weight"] = np.zeros((3, 16, 5, 5), np.float32)
  with pytest.raises(WeightFileError) as err:
    load_release_weights(_save_npz(tmp_path / "bad.npz", sd, "param/"))
  msg = str(err.value)
  assert "missing (2): conv_fuse.2.fuse.1.bias, up2_fre.0.2.weight" in msg
  assert "unexpected (1): extra.layer.weight" in msg
  assert "tail.0.layers.weight: file (3, 16, 5, 5), model (3, 16, 3, 3)" in msg
  assert "bad.npz" in msg


@pytest.mark.parametrize("case", ["no_generator", "corrupt_npz", "corrupt_pth",
                                  "pickled_module", "legacy_without_torch", "missing"])
def test_files_that_are_not_state_dicts(case, tmp_path, monkeypatch):
  if case == "no_generator":
    path, error, message = _save_npz(tmp_path / "x.npz", {"a.weight": np.ones(3)}), \
        WeightFileError, "not an SFMNet generator state_dict"
  elif case == "corrupt_npz":
    path = tmp_path / "x.npz"
    path.write_bytes(GOLDEN.read_bytes()[:5000])
    error, message = WeightFileError, "not a readable .npz"
  elif case == "corrupt_pth":
    path = tmp_path / "x.pth"
    path.write_bytes((FIXTURES / "sfmnet_w16_s32.pth").read_bytes()[:100_000])
    error, message = WeightFileError, "not a readable PyTorch state_dict"
  elif case == "pickled_module":
    path, error, message = FIXTURES / "pickled_module.pth", WeightFileError, \
        "refusing to load torch.nn.modules.linear.Linear"
  elif case == "legacy_without_torch":
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "old.pth"
    path.write_bytes(pickle.dumps({"head.0.layers.weight": [1.0]}))
    error, message = WeightFileError, "np.savez"
  else:
    path, error, message = tmp_path / "nothing.pth", FileNotFoundError, "weight file not found"
  with pytest.raises(error, match=message):
    load_release_weights(path)


def test_wrapped_state_dict_with_module_prefix():
  sd = torch_pickle.load_state_dict(FIXTURES / "wrapped_module_prefix.pth")
  assert set(sd) == {"a.weight", "b.bias", "c.steps"}
  np.testing.assert_array_equal(sd["a.weight"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
  assert sd["b.bias"].dtype == np.float64 and sd["b.bias"].tolist() == [1.5, -2.0]
  assert sd["c.steps"].shape == () and int(sd["c.steps"]) == 7


def test_convert_command_writes_a_loadable_orbax_checkpoint(golden, golden_port_outputs, tmp_path,
                                                            capsys):
  workdir = tmp_path / "run"  # laid out like a training workdir: run/checkpoints/<step>
  out_dir = workdir / "checkpoints"
  assert convert.main([str(FIXTURES / "sfmnet_w16_s32.pth"), str(out_dir), "--scale", "8"]) == 0
  assert "wrote" in capsys.readouterr().out
  apply = None
  for path in (workdir, out_dir, out_dir / "0"):  # every folder a user would pass
    model, variables, info = checkpoints.load_generator(str(path), scale=8, conv_impl="xla")
    assert info["scale"] == 8 and info["step"] == 0 and not info["ema"]
    assert (model.num_features, model.num_resblocks) == (16, 2)  # recorded, not configured
    apply = apply or jax.jit(model.apply)
    out, fre = apply(variables, golden["lr_up"])
    np.testing.assert_allclose(out, golden_port_outputs[0], atol=1e-6)
    np.testing.assert_allclose(fre, golden_port_outputs[1], atol=1e-6)
  with pytest.raises(ValueError, match=r"holds a x8 model and the data is x4: set --scale=8"):
    checkpoints.load_generator(str(workdir), scale=4, scale_flag="--scale")
  # A second conversion into the same step refuses to overwrite it.
  assert convert.main([str(GOLDEN), str(out_dir)]) == 1
  assert "already holds a checkpoint" in capsys.readouterr().err
  assert convert.main([str(FIXTURES / "pickled_module.pth"), str(tmp_path / "c2")]) == 1
  assert "refusing" in capsys.readouterr().err


def test_load_generator_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    checkpoints.load_generator(str(tmp_path / "absent"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint in this folder"):
    checkpoints.load_generator(str(tmp_path / "empty"))
