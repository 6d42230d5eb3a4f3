"""`sfmnet-export` and inference on its files: parity with the Flax model and the release,
`sfmnet-infer --model` without JAX, the Beam pipeline, bad input. Each model is exported
once for the whole file (module fixtures)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest
from PIL import Image

import helpers
from helpers import GOLDEN, REPO
from sfmnet_jax.apps import infer
from sfmnet_jax.data import astronaut, demo_render, resize
from sfmnet_jax.export import exporter, onnx_runtime, saved_model
from sfmnet_jax.faces import restore_job
from sfmnet_jax.weights.release import load_release_weights

MULTI = "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"
IN_PROCESS = "runner=DirectRunner,direct_num_workers=1,direct_running_mode=in_memory"
BAR = 1e-4


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """The golden weights at 32x32 (x8) and the tame golden weights at 128x128 (x4), both
  formats each."""
  root = tmp_path_factory.mktemp("export")
  assert exporter.main([str(GOLDEN), str(root / "golden"), "--scale=8", "--height=32",
                        "--width=32"]) == 0
  tame = helpers.tame_golden_weights(root / "tame.npz")
  assert exporter.main([str(tame), str(root / "tame"), "--scale=4"]) == 0
  return {"root": root, "golden": root / "golden", "tame_npz": tame, "tame": root / "tame"}


def _flax(path, x):
  model, variables = load_release_weights(path)
  return [np.asarray(t) for t in jax.jit(model.apply)(variables, x)]


def _branches(golden, golden_model, draws=48):
  """The outputs the golden model can take on the golden input: the release's own, and the
  Flax model's on the input and under `draws` perturbations of 1e-6. The golden input lies
  at phase jumps: 1e-6 of noise moves either image's outputs by 1.7e-2 / 2.9e-2 about
  every other draw (another rounding, another machine or thread count does the same), so
  two numerical paths agree on the golden vector only up to which side of a jump each
  image takes."""
  model, variables = golden_model
  apply = jax.jit(model.apply)
  rng = np.random.default_rng(0)
  x = golden["lr_up"]
  outs = [(golden["img_out"], golden["img_fre"])]
  for k in range(draws + 1):
    noise = 0 if k == 0 else 1e-6 * rng.standard_normal(x.shape).astype(np.float32)
    outs.append(tuple(np.asarray(t) for t in apply(variables, x + noise)))
  return outs


def _on_a_branch(out, fre, branches, bar=BAR):
  """Whether each image's two outputs are within `bar` of that image's in one branch."""
  return all(any(np.abs(out[b] - o[b]).max() < bar and np.abs(fre[b] - f[b]).max() < bar
                 for o, f in branches) for b in range(len(out)))


def test_golden_vector_onnx_and_saved_model_equal_flax_and_the_release(exports, golden,
                                                                        golden_model):
  """Both exports give the golden vector's outputs within 1e-4, up to the side of a phase
  jump that rounding picks per image (`_branches`): a wrong weight, layout or operation
  lands on no branch (the check itself is tested below)."""
  onnx_model = onnx_runtime.OnnxGenerator(exports["golden"] / "sfmnet.onnx")
  tf_model = saved_model.load(str(exports["golden"] / "saved_model"))
  branches = _branches(golden, golden_model)
  assert _on_a_branch(golden["img_out"], golden["img_fre"], branches[1:])  # Flax <-> release
  for run in (onnx_model, tf_model):
    out, fre = run(golden["lr_up"])
    assert _on_a_branch(out, fre, branches)
    assert not _on_a_branch(out * 1.001, fre, branches)  # the check can fail
  # What the JSON beside each file says (and the ONNX file carries in its metadata).
  rec = json.loads((exports["golden"] / "sfmnet.onnx.json").read_text())
  assert rec == onnx_model.info and onnx_model.scale == 8 and onnx_model.size == (32, 32)
  assert rec["input"]["name"] == "lr_up" and rec["input"]["layout"] == "NHWC"
  assert rec["input"]["shape"] == ["batch", 32, 32, 3] and rec["input"]["range"] == [0.0, 1.0]
  assert [o["name"] for o in rec["outputs"]] == ["img_out", "img_fre"]
  assert rec["source"]["checkpoint"] == str(GOLDEN) and rec["model"]["num_features"] == 16
  assert {"max_abs_img_out", "max_abs_img_fre", "reference_moves_under_1e-6_noise"} <= set(
      rec["parity"])
  tf_rec = json.loads((exports["golden"] / "saved_model.json").read_text())
  assert tf_rec["signature"] == "serving_default" and tf_rec["scale"] == 8


def _real_face_inputs(scale=4):
  """LR-up images of the astronaut's face (the one real photo that installs), shifted and
  mirrored, degraded at `scale` with PIL's bicubic."""
  import skimage.data
  photo = skimage.data.astronaut()
  crops = [photo[20:220, 126:326], photo[10:230, 120:340], photo[30:200, 150:320][:, ::-1]]
  ups = []
  for crop in crops:
    face = resize.resize_uint8(np.ascontiguousarray(crop), (128, 128))
    lr = resize.resize_uint8(face, (128 // scale, 128 // scale))
    ups.append(resize.resize_uint8(lr, (128, 128)).astype(np.float32) / 255)
  return np.stack(ups)


def test_real_face_crops_within_the_bar_of_flax(exports):
  """On real face crops at 128x128 both exports give the Flax model's outputs. (The tame
  weights keep the reference stable: checked, so the bar tests the export, not a jump.)"""
  x = _real_face_inputs()
  want = _flax(exports["tame_npz"], x)
  noisy = _flax(exports["tame_npz"], x + 1e-6 * np.random.default_rng(0).standard_normal(
      x.shape).astype(np.float32))
  assert max(np.abs(a - b).max() for a, b in zip(noisy, want)) < BAR / 4
  for run in (onnx_runtime.OnnxGenerator(exports["tame"] / "sfmnet.onnx"),
              saved_model.load(str(exports["tame"] / "saved_model"))):
    out, fre = run(x)
    assert np.abs(out - want[0]).max() < BAR and np.abs(fre - want[1]).max() < BAR
  for name in ("sfmnet.onnx.json", "saved_model.json"):
    parity = json.loads((exports["tame"] / name).read_text())["parity"]
    assert max(parity["max_abs_img_out"], parity["max_abs_img_fre"]) < BAR, parity


def _inputs(root):
  """Two 32x32 LR faces (x4 crops), the astronaut group photo (faces that HOG finds, which
  the tests restore with --restore_large), an unreadable file."""
  root.mkdir()
  for i in range(2):
    lr = resize.resize_uint8(demo_render.render_face(5, i), (32, 32))
    Image.fromarray(lr).save(root / f"crop_{i}.png")
  group, _ = astronaut.astronaut_group_photo(3, (240, 360), 21.0, seed=2)
  Image.fromarray(group).save(root / "group.png")
  (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  return root


def _pngs(out):
  return {n: (out / n).read_bytes() for n in sorted(os.listdir(out)) if n.endswith(".png")}


NO_JAX = """
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'tensorflow', 'optax', 'orbax'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from sfmnet_jax.apps import infer
code = infer.main(sys.argv[1:])
loaded = sorted(m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules)
print('loaded:', loaded)
sys.exit(code)
"""


def test_infer_with_the_onnx_file_needs_no_jax_and_matches_the_jax_path(exports, tmp_path):
  inputs = _inputs(tmp_path / "in")
  args = [f"--input={inputs}", "--detector=hog", "--restore_large", "--bicubic"]
  result = subprocess.run(
      [sys.executable, "-c", NO_JAX, f"--model={exports['tame'] / 'sfmnet.onnx'}",
       f"--output={tmp_path / 'onnx'}", *args],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "loaded: []" in result.stdout
  assert "group: 3 face(s), 3 restored" in result.stdout
  assert "wrote 2 super-resolved face crop(s) (x4, 128x128)" in result.stdout
  assert "skipped 1 unreadable file(s)" in result.stdout
  demo = subprocess.run(  # the built-in group photo needs no TensorFlow either
      [sys.executable, "-c", NO_JAX, f"--model={exports['tame'] / 'sfmnet.onnx'}", "--demo",
       "--detector=hog", "--upsample=3", f"--output={tmp_path / 'demo'}"],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert demo.returncode == 0 and "loaded: []" in demo.stdout, demo.stderr[-3000:]
  # dlib's HOG (what runs without TensorFlow) finds 2 of its 3 faces of ~27 px crops.
  assert "astronaut_group: 2 face(s), 2 restored" in demo.stdout
  assert infer.main([f"--checkpoint={exports['tame_npz']}", "--scale=4",
                     f"--output={tmp_path / 'jax'}", *args]) == 0
  onnx_out, jax_out = _pngs(tmp_path / "onnx"), _pngs(tmp_path / "jax")
  assert sorted(onnx_out) == sorted(jax_out) and len(onnx_out) >= 12
  for name in onnx_out:  # within one grey level of the JAX path
    a = np.asarray(Image.open(tmp_path / "onnx" / name)).astype(int)
    b = np.asarray(Image.open(tmp_path / "jax" / name)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1, name
  log = json.loads((tmp_path / "onnx" / "infer_log.json").read_text())
  assert {d["file"]: d["status"] for d in log["files"]} == {
      "broken.png": "unreadable", "crop_0.png": "crop", "crop_1.png": "crop",
      "group.png": "photo"}


def test_beam_workers_write_the_one_process_bytes_and_a_killed_run_resumes(exports, tmp_path,
                                                                          capsys):
  inputs = _inputs(tmp_path / "in")
  model = f"--model={exports['tame'] / 'sfmnet.onnx'}"
  common = [model, f"--input={inputs}", "--detector=hog", "--restore_large", "--freq"]
  assert infer.main([*common, f"--output={tmp_path / 'one'}"]) == 0
  assert infer.main([*common, f"--output={tmp_path / 'beam'}",
                     f"--beam_pipeline_options={MULTI}"]) == 0
  assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
  one, beam = _pngs(tmp_path / "one"), _pngs(tmp_path / "beam")
  assert len(one) >= 12 and beam == one  # byte for byte
  logs = [json.loads((tmp_path / d / "infer_log.json").read_text())["files"]
          for d in ("one", "beam")]
  assert logs[0] == logs[1]
  assert not os.path.exists(tmp_path / "beam" / restore_job.PENDING)
  # A run killed after restoring crop_0: its decision waits as a pending file.
  out = tmp_path / "resumed"
  job = restore_job.RestoreJob(str(out), lambda: onnx_runtime.OnnxGenerator(
      exports["tame"] / "sfmnet.onnx"), 4, detector="hog", restore_large=True, freq=True)
  os.makedirs(out)
  job.run([str(inputs / "crop_0.png")])
  first = os.path.getmtime(out / "crop_0_sfmnet_x4.png")
  assert infer.main([*common, f"--output={out}", f"--beam_pipeline_options={IN_PROCESS}"]) == 0
  assert "1 file(s) already done" in capsys.readouterr().out
  assert os.path.getmtime(out / "crop_0_sfmnet_x4.png") == first  # not restored twice
  assert _pngs(out) == one
  stamps = {n: os.path.getmtime(out / n) for n in _pngs(out)}
  assert infer.main([*common, f"--output={out}"]) == 0  # a rerun: nothing to do
  assert "4 file(s) already done" in capsys.readouterr().out
  assert {n: os.path.getmtime(out / n) for n in _pngs(out)} == stamps


def _error(capsys):
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err, err
  return err


def test_bad_checkpoints_sizes_folders_and_models_are_one_line_errors(exports, tmp_path, capsys,
                                                                      monkeypatch):
  out = tmp_path / "out"
  assert exporter.main([str(tmp_path / "missing.pth"), str(out)]) == 1
  assert "checkpoint not found" in _error(capsys)
  (tmp_path / "notes.pth").write_text("not weights")
  assert exporter.main([str(tmp_path / "notes.pth"), str(out), "--scale=8"]) == 1
  assert "notes.pth: not an SFMNet checkpoint" in _error(capsys)
  assert exporter.main([str(GOLDEN), str(out), "--scale=8", "--height=30"]) == 1
  assert "unsupported size 30x128" in _error(capsys)
  assert exporter.main([str(GOLDEN), str(out), "--scale=8", "--batch=0"]) == 1
  assert "--batch must be" in _error(capsys)
  assert exporter.main([str(GOLDEN), str(exports["golden"]), "--scale=8"]) == 1
  assert "exists: remove it" in _error(capsys)
  assert exporter.main([str(GOLDEN), str(out)]) == 1
  assert "does not record its scale: pass --scale" in _error(capsys)
  # A failure half-way leaves nothing: no OUT_DIR, no temporary folder beside it.
  def broken(*args, **kwargs):
    raise RuntimeError("disk full")
  monkeypatch.setattr(saved_model, "save", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    exporter.export(GOLDEN, out, "all", (32, 32), scale=8)
  assert os.listdir(tmp_path) == ["notes.pth"]
  # ONNX files that are not an SFMNet export.
  other = tmp_path / "other.onnx"
  node = onnx.helper.make_node("Identity", ["x"], ["y"])
  vi = lambda n: onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1])  # noqa: E731
  onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [vi("x")], [vi("y")])),
            other)
  with pytest.raises(onnx_runtime.NotAnSfmnetModel, match="other.onnx: not an SFMNet export"):
    onnx_runtime.OnnxGenerator(other)
  (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
  with pytest.raises(onnx_runtime.NotAnSfmnetModel, match="junk.onnx: not a loadable ONNX"):
    onnx_runtime.OnnxGenerator(tmp_path / "junk.onnx")
  photos = _inputs(tmp_path / "in")
  for model, message in ((other, "not an SFMNet export"),
                         (exports["golden"] / "sfmnet.onnx", "takes 32x32 images"),
                         (tmp_path / "gone.onnx", "ONNX model not found")):
    assert infer.main([f"--model={model}", f"--input={photos}",
                       f"--output={tmp_path / 'o'}"]) == 1
    assert message in _error(capsys)
  with pytest.raises(ValueError, match=r"takes \(B, 32, 32, 3\) images"):
    onnx_runtime.OnnxGenerator(exports["golden"] / "sfmnet.onnx")(np.zeros((1, 64, 64, 3)))


def test_a_fixed_batch_export(exports, tmp_path, golden):
  out = tmp_path / "b2"
  assert exporter.main([str(GOLDEN), str(out), "--scale=8", "--height=32", "--width=32",
                        "--batch=2", "--format=onnx"]) == 0
  assert sorted(os.listdir(out)) == ["sfmnet.onnx", "sfmnet.onnx.json"]
  model = onnx_runtime.OnnxGenerator(out / "sfmnet.onnx")
  assert model.batch == 2 and model.info["input"]["shape"] == [2, 32, 32, 3]
  dynamic = onnx_runtime.OnnxGenerator(exports["golden"] / "sfmnet.onnx")
  np.testing.assert_allclose(model(golden["lr_up"])[0], dynamic(golden["lr_up"])[0], atol=BAR)
  with pytest.raises(ValueError, match="exported for batch 2, got 3"):
    model(np.zeros((3, 32, 32, 3), np.float32))
