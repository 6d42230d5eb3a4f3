r"""Super-resolves faces with a trained or released SFMNet: LR crops, or whole photos.

  sfmnet-infer --checkpoint=runs/demo --input=photo.jpg --output=out
  sfmnet-infer --checkpoint=SFMNet_x8.pth --scale=8 --input=photos/ --output=out
  sfmnet-infer --checkpoint=runs/demo --demo --output=out   # astronaut group photo
  sfmnet-infer --model=exported/sfmnet.onnx --input=photos/ --output=out   # no JAX
  sfmnet-infer --model=sfmnet.onnx --input=DIR --output=OUT \
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

An input of the model's LR size (128/scale, e.g. 16x16 at x8) is an aligned LR
face and is super-resolved as it is (`<name>_sfmnet_x8.png`, 128x128). A
larger photo goes through the whole-photo pipeline (`photo.py`): every face is
detected (dlib, offline), aligned into the training crop (--convention),
sampled at the LR size, super-resolved and blended back into the photo
upscaled by the model's scale. Per photo it writes
  <name>_restored_x8.png   the photo, upscaled, with the faces restored
  <name>_faces.png         the photo with numbered face boxes and landmarks
  <name>_faces.json        every face: box, landmarks, score, transform, what was done
  <name>_face01_lr.png, <name>_face01_sfmnet_x8.png, ...  each face's crops
(--freq adds the frequency branch, --bicubic the bicubic baselines). Faces too
large for the scale are left as they are and reported (--restore_large to
restore them anyway). --nodetect keeps the old behaviour for photos: centre
crop to a square, PIL-bicubic to the LR size. Unreadable files and photos over
--max_pixels are skipped and counted; a photo without faces is reported.
`infer_log.json` in the output folder records what was done with each file; a
rerun skips the files already done (a killed run resumes).

--model takes an ONNX file written by `sfmnet-export` and runs it on
onnxruntime: this path imports neither JAX nor TensorFlow. With
--beam_pipeline_options the files are restored by an Apache Beam pipeline
(`faces/beam_restore.py`), with the same output bytes.
"""

from sfmnet_jax import runtime

if __name__ == "__main__" and not any(a.startswith("--model") for a in __import__("sys").argv):
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from sfmnet_jax import cli  # noqa: E402
from sfmnet_jax.data import image_io  # noqa: E402
from sfmnet_jax.data.degradation import HR_SIZE  # noqa: E402
from sfmnet_jax.data.visualize import save_png  # noqa: E402
from sfmnet_jax.faces import alignment, photo, restore_job  # noqa: E402
from sfmnet_jax.faces import detection as face_detection  # noqa: E402


def define_flags(fv):
  f = cli.flags
  f.DEFINE_string("checkpoint", "runs/demo", "A training workdir, checkpoint folder, convert "
                  "folder or release .pth/.npz; two or more, comma-separated (e.g. an x4 "
                  "and an x8 model): each face goes to the scale that suits its size.",
                  flag_values=fv)
  f.DEFINE_string("model", None, "An ONNX file written by sfmnet-export, run on onnxruntime "
                  "(instead of --checkpoint; no JAX needed).", flag_values=fv)
  f.DEFINE_string("input", None, "An image file or a folder of images.", flag_values=fv)
  f.DEFINE_string("output", None, "Output folder.", flag_values=fv)
  f.DEFINE_enum("scale", None, ["4", "8", "16"], "Needed when the checkpoint does not record "
                "it (release files).", flag_values=fv)
  f.DEFINE_bool("demo", False, "Use a built-in group photo of the public-domain astronaut.",
                flag_values=fv)
  f.DEFINE_bool("detect", True, "Find faces in photos (--nodetect: centre-crop instead).",
                flag_values=fv)
  f.DEFINE_enum("detector", "auto", list(face_detection.DETECTORS), "Face detector.",
                flag_values=fv)
  f.DEFINE_integer("upsample", 2, "Detector upsamplings (each doubles the size: 2 finds faces "
                   "of ~20 px).", flag_values=fv)
  f.DEFINE_float("min_score", None, "Drop detections below this score.", flag_values=fv)
  f.DEFINE_string("convention", "celeba", "Crop convention the model was trained on: celeba, "
                  "helen, dic (68 points: non-commercial) or a JSON template file.",
                  flag_values=fv)
  f.DEFINE_bool("restore_large", False, "Also restore faces larger than the scale suits.",
                flag_values=fv)
  f.DEFINE_bool("freq", False, "Also save the frequency branch.", flag_values=fv)
  f.DEFINE_bool("bicubic", False, "Also save bicubic upsampling.", flag_values=fv)
  f.DEFINE_bool("ema", True, "Use EMA weights when the checkpoint has them.", flag_values=fv)
  f.DEFINE_integer("max_pixels", photo.DEFAULT_MAX_PIXELS, "Refuse larger photos.",
                   flag_values=fv)
  f.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Computation dtype of the "
                "generator (parameters, FFTs and phases stay float32).", flag_values=fv)
  f.DEFINE_string("beam_pipeline_options", None, "Restore the files as an Apache Beam "
                  "pipeline, e.g. 'runner=DirectRunner,direct_num_workers=2,"
                  "direct_running_mode=multi_processing' (comma-separated, no dashes).",
                  flag_values=fv)


def demo_group_photo(scale: int):
  """Three astronauts, faces about 0.45 x the LR crop's side wide (at x4 ~14 px, crops of
  ~28 px: restored; at least 8 px, about what MTCNN still finds, so that at x16 they are
  too large and left as they are)."""
  from sfmnet_jax.data import astronaut
  width = max(0.45 * HR_SIZE / scale, 8.0)
  return astronaut.astronaut_group_photo(3, (240, 360), width, seed=1)[0]


def onnx_generator(path):
  """The exported model on onnxruntime (what --model loads; imports no JAX)."""
  from sfmnet_jax.export.onnx_runtime import OnnxGenerator
  return OnnxGenerator(path)


def jax_generator(checkpoint, use_ema, scale, dtype):
  """(generator, info) of a checkpoint (what --checkpoint loads)."""
  from sfmnet_jax.weights import checkpoints
  model, variables, info = checkpoints.load_generator(
      checkpoint, use_ema=use_ema, scale=scale, scale_flag="--scale", dtype=dtype)
  return photo.as_generator(model, variables), info


def _jax_generator_only(*args):
  return jax_generator(*args)[0]


def _jax_generators(checkpoints, use_ema, dtype):
  """{scale: generator} of several checkpoints, each recording its scale."""
  out = {}
  for checkpoint in checkpoints:
    generator, info = jax_generator(checkpoint, use_ema, None, dtype)
    if info["scale"] is None:
      raise ValueError(f"{checkpoint} does not record its scale: with several checkpoints "
                       "give folders that do (sfmnet-convert FILE OUT --scale=N)")
    if info["scale"] in out:
      raise ValueError(f"two checkpoints of x{info['scale']}: give one per scale")
    out[info["scale"]] = generator
  return out


def open_generator(fv):
  """(generator, a picklable loader that makes it again on a Beam worker, scale, label)."""
  scale = int(fv.scale) if fv.scale else None
  if fv.model:
    if fv["checkpoint"].present:
      raise cli.UsageError("give --model or --checkpoint, not both")
    if fv.dtype != "float32":
      raise ValueError(f"--model={fv.model}: ONNX exports compute in float32 (--dtype "
                       f"{fv.dtype} is for --checkpoint)")
    generator = onnx_generator(fv.model)
    if generator.size != (HR_SIZE, HR_SIZE):
      raise ValueError(f"{fv.model} takes {generator.size[0]}x{generator.size[1]} images; faces "
                       f"are {HR_SIZE}x{HR_SIZE}: export with --height={HR_SIZE} "
                       f"--width={HR_SIZE}")
    if scale is not None and generator.scale != scale:
      raise ValueError(f"{fv.model} is a x{generator.scale} model, not x{scale}")
    return (generator, functools.partial(onnx_generator, fv.model), generator.scale,
            f"{os.path.basename(fv.model)} on onnxruntime")
  several = [c for c in fv.checkpoint.split(",") if c]
  if len(several) > 1:
    generators = _jax_generators(several, fv.ema, fv.dtype)
    return (generators, functools.partial(_jax_generators, several, fv.ema, fv.dtype),
            max(generators), f"JAX, {fv.dtype}, x{' and x'.join(map(str, sorted(generators)))}")
  args = (fv.checkpoint, fv.ema, scale, fv.dtype)
  generator, info = jax_generator(*args)
  if info["scale"] is None:
    raise ValueError(f"{fv.checkpoint} does not record its scale: pass --scale=4, 8 or 16")
  return (generator, functools.partial(_jax_generator_only, fv.checkpoint, fv.ema,
                                       info["scale"], fv.dtype), info["scale"],
          f"JAX, {fv.dtype}")


def report(decisions, scale, detector, upsample):
  """Prints what was done with each photo; returns the counts."""
  counts = {k: 0 for k in ("photos", "faces", "too_large", "no_face", "crops", "unreadable",
                           "over_limit", "error")}
  for d in sorted(decisions, key=lambda d: d["file"]):
    name = os.path.splitext(d["file"])[0]
    status = d["status"]
    if status == "photo":
      counts["photos"] += 1
      counts["faces"] += d["restored"]
      counts["too_large"] += d["too_large"]
      print(f"{name}: {d['faces']} face(s), {d['restored']} restored"
            + (f", {d['too_large']} left as they are (too large for x{scale})"
               if d["too_large"] else "") + f" -> {d['output']}")
      for line in d.get("decisions", []):
        print(f"  {line}")
    elif status == "no_face":
      counts["photos"] += 1
      counts["no_face"] += 1
      print(f"{name}: no face found ({photo.size_range(detector, scale)}); smaller faces "
            "are too small to find")
    elif status == "crop":
      counts["crops"] += 1
    elif status == "too_large":
      counts["over_limit"] += 1
    else:
      counts[status] += 1
      print(f"{d['file']}: {status}: {d.get('error')}")
  if counts["crops"]:
    print(f"wrote {counts['crops']} super-resolved face crop(s) (x{scale}, {HR_SIZE}x{HR_SIZE})")
  return counts


def run(fv) -> int:
  generator, loader, scale, label = open_generator(fv)
  convention = alignment.get_convention(fv.convention)
  convention.warn_licence()
  if fv.detect:
    scales = list(generator) if isinstance(generator, dict) else scale
    print(f"faces: {photo.size_range(fv.detector, scales)}")
  scratch = None
  if fv.demo:
    scratch = tempfile.mkdtemp(prefix="sfmnet_infer_demo_")
    paths = [os.path.join(scratch, "astronaut_group.png")]
    save_png(demo_group_photo(scale), paths[0])
  else:
    if not fv.input or not os.path.exists(fv.input):
      raise FileNotFoundError(f"--input not found: {fv.input}")
    paths = ([os.path.join(fv.input, n) for n in image_io.list_image_files(fv.input)]
             if os.path.isdir(fv.input) else [fv.input])
  if not paths:
    raise ValueError(f"no file in {fv.input}")
  os.makedirs(fv.output, exist_ok=True)
  job = restore_job.RestoreJob(
      fv.output, loader, scale, detect=fv.detect, detector=fv.detector, upsample=fv.upsample,
      min_score=fv.min_score, convention=fv.convention, restore_large=fv.restore_large,
      freq=fv.freq, bicubic=fv.bicubic, max_pixels=fv.max_pixels)
  done = restore_job.decided(fv.output)
  todo = [p for p in paths if os.path.basename(p) not in done]
  if len(todo) < len(paths):
    print(f"{len(paths) - len(todo)} file(s) already done in {fv.output} (infer_log.json): "
          "skipped")
  try:
    if fv.beam_pipeline_options is not None:
      from sfmnet_jax.faces import beam_restore
      if todo:
        beam_restore.run(job, todo, fv.beam_pipeline_options)
    else:
      job.generator = generator
      job.run(todo)
  finally:
    decisions = restore_job.merge_log(fv.output, {"scale": scale, "model": label})
    if scratch:
      import shutil
      shutil.rmtree(scratch, ignore_errors=True)
  names = {os.path.basename(p) for p in paths}
  counts = report([d for f, d in decisions.items() if f in names], scale, fv.detector,
                  fv.upsample)
  readable = counts["photos"] + counts["crops"]
  if not readable and not counts["error"]:
    raise ValueError(f"no readable image in {fv.input} ({counts['unreadable']} unreadable)")
  print(f"done: {counts['photos']} photo(s), {counts['faces']} face(s) restored, "
        f"{counts['too_large']} too large, {counts['no_face']} photo(s) without a face, "
        f"{counts['crops']} crop(s); skipped {counts['unreadable']} unreadable file(s), "
        f"{counts['over_limit']} over --max_pixels, {counts['error']} failed; x{scale} "
        f"({label}); output in {fv.output}")
  return 0


def _main(fv, positional) -> int:
  if positional:
    raise cli.UsageError(f"unexpected arguments {positional}")
  if not fv.demo and not fv.input:
    raise cli.UsageError("give --input=PATH_OR_DIR or --demo")
  if not fv.output:
    raise cli.UsageError("give --output=DIR")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    return run(fv)
  except (FileNotFoundError, ValueError, ImportError, face_detection.ModelFileMissing) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-infer")


if __name__ == "__main__":
  sys.exit(main())
