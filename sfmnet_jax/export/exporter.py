r"""Exports a generator as ONNX and/or a TensorFlow SavedModel, with parity measured at export.

  sfmnet-export runs/demo exported/ --format=all
  sfmnet-export SFMNet_x8.pth exported_x8/ --scale=8 --format=onnx --batch=1

CHECKPOINT is anything `evaluate.py --checkpoint` takes (a workdir, its
checkpoints/ or a step folder, a `sfmnet-convert` folder, a release .pth/.npz);
width, depth and scale come from it (--scale for release files, which record
none). OUT_DIR must not exist; it is written under a temporary name and renamed
when everything is in it, so a failed export leaves nothing behind. It gets
  sfmnet.onnx, sfmnet.onnx.json          (--format=onnx or all)
  saved_model/, saved_model.json         (--format=saved_model or all)
Each JSON (also inside the ONNX file's metadata) records the scale, the input
(`lr_up`: NHWC float32 in [0, 1], the LR face upsampled to --height x --width
with PIL's bicubic, as the release feeds its network), the outputs `img_out`
(the SR face) and `img_fre` (the frequency branch), the source checkpoint and
the parity figures: the largest absolute difference of each output from the
Flax model (exact mode) on the astronaut's face (a real photo) degraded at the
model's scale, and how far the Flax model's own output moves under 1e-6 input
noise (a bin at its phase jump makes every numerical path differ that much).
"""

from sfmnet_jax import runtime

if __name__ == "__main__":
  runtime.prepare_process()

# pylint: disable=g-import-not-at-top,wrong-import-position
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402

from sfmnet_jax import cli  # noqa: E402
from sfmnet_jax.export import onnx_runtime  # noqa: E402

FORMATS = ("onnx", "saved_model", "all")
PARITY_BAR = 1e-4
VERSIONS = ("jax", "flax", "onnx", "onnxruntime", "tensorflow-cpu", "numpy")


class ExportError(ValueError):
  """A checkpoint, size or output folder the export cannot use (one line, names the problem)."""


def define_flags(fv):
  f = cli.flags
  f.DEFINE_enum("format", "all", list(FORMATS), "What to write.", flag_values=fv)
  f.DEFINE_integer("height", 128, "Input height (divisible by 8).", flag_values=fv)
  f.DEFINE_integer("width", 128, "Input width (divisible by 8).", flag_values=fv)
  f.DEFINE_string("batch", "dynamic", "'dynamic' (any batch size) or a fixed batch size.",
                  flag_values=fv)
  f.DEFINE_enum("scale", None, ["4", "8", "16"], "The model's scale, for checkpoints that do "
                "not record it (release files).", flag_values=fv)
  f.DEFINE_bool("ema", True, "Use EMA weights when the checkpoint has them.", flag_values=fv)


def parse_batch(value: str):
  if value == "dynamic":
    return None
  try:
    batch = int(value)
  except ValueError:
    batch = 0
  if batch < 1:
    raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
  return batch


def check_size(height: int, width: int) -> None:
  if height < 8 or width < 8 or height % 8 or width % 8:
    raise ExportError(f"unsupported size {height}x{width}: height and width must be positive "
                      "multiples of 8 (SFMNet halves them three times)")


def probe_inputs(size, scale: int, batch=None) -> np.ndarray:
  """LR-up images of the astronaut's face (and its mirror image) at `size`, degraded by
  `scale` with PIL's bicubic, as the release makes its inputs; padded to `batch` if fixed."""
  from sfmnet_jax.data import astronaut, resize
  h, w = size
  face = astronaut.astronaut_face(max(h, w))
  face = resize.resize_uint8(face, (h, w)) if h != w else face
  images = []
  for img in (face, face[:, ::-1]):
    lr = resize.resize_uint8(np.ascontiguousarray(img), (max(h // scale, 1), max(w // scale, 1)))
    images.append(resize.resize_uint8(lr, (h, w)).astype(np.float32) / 255.0)
  x = np.stack(images)
  if batch is not None:
    x = np.concatenate([x] * (batch // len(x) + 1))[:batch]
  return x


def parity(run, reference, x, noise_moves) -> dict:
  out, fre = (np.asarray(t) for t in run(x))
  return {"max_abs_img_out": float(np.abs(out - reference[0]).max()),
          "max_abs_img_fre": float(np.abs(fre - reference[1]).max()),
          "mean_abs_img_out": float(np.abs(out - reference[0]).mean()),
          "mean_abs_img_fre": float(np.abs(fre - reference[1]).mean()),
          "reference_moves_under_1e-6_noise": noise_moves,
          "inputs": "the astronaut's face (and mirror image), degraded at the model's scale",
          "reference": "the Flax model, exact mode (XLA's ops)"}


def record(fmt, file, scale, size, batch, model, info, checkpoint) -> dict:
  from sfmnet_jax.weights import checkpoints
  h, w = size
  return {
      "format": fmt, "file": file, "scale": scale,
      "input": {"name": onnx_runtime.INPUT, "layout": "NHWC", "dtype": "float32",
                "shape": [batch or "batch", h, w, 3], "range": [0.0, 1.0],
                "what": f"the LR face upsampled to {h}x{w} with PIL's bicubic (the release's "
                        "LR-up)"},
      "outputs": [{"name": "img_out", "what": "the super-resolved face (spatial branch)",
                   "shape": [batch or "batch", h, w, 3]},
                  {"name": "img_fre", "what": "the frequency branch's output",
                   "shape": [batch or "batch", h, w, 3]}],
      "model": checkpoints.model_meta(model),
      "source": {"checkpoint": os.path.abspath(str(checkpoint)), "step": info.get("step"),
                 "ema": info.get("ema")},
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "versions": {p: runtime.package_version(p) for p in VERSIONS}}


def export(checkpoint, out_dir, fmt="all", size=(128, 128), batch=None, scale=None,
           use_ema=True) -> dict:
  """Writes the export (see the module docstring); returns {format: record}."""
  if fmt not in FORMATS:
    raise ExportError(f"unknown format {fmt!r}; one of {FORMATS}")
  check_size(*size)
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir):
    raise ExportError(f"{out_dir} exists: remove it or give another OUT_DIR")
  import jax
  from sfmnet_jax.weights import checkpoints
  from sfmnet_jax.weights.release import WeightFileError
  try:
    model, variables, info = checkpoints.load_generator(checkpoint, use_ema=use_ema,
                                                        scale=scale, conv_impl="xla")
  except WeightFileError as e:
    raise ExportError(f"{checkpoint}: not an SFMNet checkpoint ({_one_line(e)})") from None
  scale = info["scale"] or scale
  if scale is None:
    raise ExportError(f"{checkpoint} does not record its scale: pass --scale=4, 8 or 16")
  variables = jax.tree_util.tree_map(np.asarray, variables)
  x = probe_inputs(size, scale, batch)
  apply = jax.jit(model.apply)
  reference = [np.asarray(t) for t in apply(variables, x)]
  noisy = x + 1e-6 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
  moves = {f"max_abs_{k}": float(np.abs(np.asarray(t) - r).max())
           for k, t, r in zip(onnx_runtime.OUTPUTS, apply(variables, noisy), reference)}
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  work = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
  records = {}
  try:
    if fmt in ("onnx", "all"):
      records["onnx"] = _write_onnx(model, variables, work, size, batch, scale, info,
                                    checkpoint, x, reference, moves)
    if fmt in ("saved_model", "all"):
      records["saved_model"] = _write_saved_model(model, variables, work, size, batch, scale,
                                                  info, checkpoint, x, reference, moves)
    os.rename(work, out_dir)
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    raise
  noise = max(moves.values())
  for fmt_name, rec in records.items():
    p = rec["parity"]
    worst = max(p["max_abs_img_out"], p["max_abs_img_fre"])
    if worst > PARITY_BAR:
      logging.warning("%s differs from the Flax model by %.2g (bar %.0e); the model's own "
                      "output moves by %.2g under 1e-6 input noise%s", fmt_name, worst,
                      PARITY_BAR, noise, " (its phase jumps: any other numerical path "
                      "differs as much)" if noise >= worst / 10 else "")
  return records


def _one_line(e) -> str:
  return " ".join(str(e).split())


def _write_json(path, rec):
  with open(path, "w") as f:
    json.dump(rec, f, indent=1)


def _write_onnx(model, variables, work, size, batch, scale, info, checkpoint, x, reference,
                moves):
  import onnx
  import onnxruntime as ort
  from sfmnet_jax.export import onnx_graph, onnx_model
  proto = onnx_model.sfmnet_to_onnx(model, variables, size, batch, doc="SFMNet face "
                                    "super-resolution (sfmnet_jax export); see the "
                                    "sfmnet_jax.export metadata")
  session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  rec = record("onnx", "sfmnet.onnx", scale, size, batch, model, info, checkpoint)
  rec["opset"] = onnx_graph.OPSET
  rec["parity"] = parity(lambda t: session.run(list(onnx_runtime.OUTPUTS),
                                               {onnx_runtime.INPUT: t}), reference, x, moves)
  onnx.helper.set_model_props(proto, {onnx_runtime.MARKER: json.dumps(rec)})
  onnx.save(proto, os.path.join(work, "sfmnet.onnx"))
  _write_json(os.path.join(work, "sfmnet.onnx.json"), rec)
  return rec


def _write_saved_model(model, variables, work, size, batch, scale, info, checkpoint, x,
                       reference, moves):
  from sfmnet_jax.export import saved_model
  path = os.path.join(work, "saved_model")
  saved_model.save(model, variables, path, size, batch)
  rec = record("saved_model", "saved_model", scale, size, batch, model, info, checkpoint)
  rec["signature"] = saved_model.SIGNATURE
  rec["parity"] = parity(saved_model.load(path), reference, x, moves)
  _write_json(os.path.join(work, "saved_model.json"), rec)
  return rec


def _main(fv, positional) -> int:
  if len(positional) != 2:
    raise cli.UsageError("give CHECKPOINT OUT_DIR")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  checkpoint, out_dir = positional
  try:
    records = export(checkpoint, out_dir, fv.format, (fv.height, fv.width),
                     parse_batch(fv.batch), int(fv.scale) if fv.scale else None, fv.ema)
  except (ExportError, FileNotFoundError, ValueError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 1
  for fmt, rec in records.items():
    p = rec["parity"]
    print(f"wrote {os.path.join(out_dir, rec['file'])} (x{rec['scale']}, "
          f"{fv.height}x{fv.width}, batch {fv.batch}): max |difference| from the Flax model "
          f"img_out {p['max_abs_img_out']:.1e}, img_fre {p['max_abs_img_fre']:.1e}")
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-export")


if __name__ == "__main__":
  sys.exit(main())
