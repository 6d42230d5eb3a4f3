"""The `sfmnet-benchmark` commands for deployment and accelerators: `export`, `aot`, `faces`,
`twin` (their flags and what each runs; `__main__.py` dispatches)."""

import importlib.util
import json
import os
import re

from sfmnet_jax import cli, runtime


BENCHMARK_DIR = "benchmark_results"


def write_json(result, name, output=None):
  path = output or os.path.join(BENCHMARK_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")


def bench_export(fv):
  from sfmnet_jax.benchmarks import export as export_benchmark
  widths = [int(w) for w in fv.widths] if fv["widths"].present else [16, 64]
  batches = fv.batch_sizes if fv["batch_sizes"].present else [1, 8]
  result = export_benchmark.run(fv.release_dir, widths, batches, fv.repeats, fv.rounds)
  write_json(result, f"export_{result['machine']['platform']}", fv.output)
  return result


def bench_aot(fv):
  from sfmnet_jax.apps import config_files
  from sfmnet_jax.benchmarks import aot
  config_files.make_importable()
  path = fv.config or config_files.config_path("celeba_x8_tpu_pod")
  spec = importlib.util.spec_from_file_location("aot_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  name = "aot_" + re.sub(r"[^\w]+", "_", fv.target)
  save = lambda result: write_json({**result, "config_file": path}, name, fv.output)  # noqa: E731
  result = aot.run(module.get_config(), fv.target, fv.per_device_batch, tuple(fv.dtypes),
                   tuple(fv.programs), fv.find_max_batch, on_row=save)
  save(result)
  return {**result, "config_file": path}


def bench_faces(fv):
  from sfmnet_jax.benchmarks import faces
  sizes = [int(s) for s in fv.face_sizes]
  crops = faces.crops_from(fv.hr_dir)
  real = crops[:1] + [c[:, ::-1].copy() for c in crops[:1]]
  result = {"benchmark": "faces", "sizes": sizes, "crops": len(crops), "hr_dir": fv.hr_dir,
            "detection": {}}
  for kind, subset in (("astronaut (a real photo)", real), ("all crops", crops)):
    print(kind)
    result["detection"][kind] = faces.detection_rows(
        subset, faces.candidates(fv.detectors), sizes, fv.photos_per_size, fv.faces_per_photo)
  result["restoration"] = []
  for checkpoint in fv.restore_checkpoints:
    from sfmnet_jax.faces import photo
    from sfmnet_jax.weights import checkpoints
    model, variables, info = checkpoints.load_generator(checkpoint)
    if info["scale"] is None:
      raise cli.UsageError(f"{checkpoint} records no scale: give a training or convert folder")
    print(f"restoration, x{info['scale']} ({checkpoint})")
    result["restoration"] += [dict(r, checkpoint=checkpoint) for r in faces.restoration_rows(
        crops, photo.as_generator(model, variables), info["scale"], sizes, "auto",
        fv.photos_per_size, fv.faces_per_photo)]
  result["machine"] = runtime.machine_info()
  write_json(result, "faces", fv.output)
  return result


def bench_twin(fv):
  from sfmnet_jax.benchmarks import twin
  for flag in ("train_dir", "test_dir", "output"):
    if not fv[flag].value:
      raise cli.UsageError(f"twin needs --{flag}")
  return twin.run(fv.release_dir, fv.train_dir, fv.test_dir, fv.output, steps=fv.steps,
                  width=fv.width, scale=int(fv.scale), stage=fv.stage, seed=fv.seed,
                  seeds=fv.seeds, batch=fv.batch_size, eval_every=fv.eval_every,
                  release_python=fv.release_python, vgg=fv.vgg, init_from=fv.init_from,
                  conv_impl=fv.conv_impl, test_limit=fv.test_limit, patch_size=fv.patch_size)


def define_flags(fv):
  f = cli.flags
  # aot
  f.DEFINE_string("config", None, "aot: a config file (default "
                  "configs/celeba_x8_tpu_pod.py).", flag_values=fv)
  f.DEFINE_integer("per_device_batch", 8, "aot: images per device.", flag_values=fv)
  f.DEFINE_list("dtypes", ["bfloat16", "float32"], "aot: compute dtypes.", flag_values=fv)
  f.DEFINE_list("programs", ["psnr", "gan", "forward"], "aot: what to compile.",
                flag_values=fv)
  f.DEFINE_bool("find_max_batch", False, "aot: also find the largest per-device batch of "
                "the train steps that fits (2-3 more compiles each).", flag_values=fv)
  # faces
  f.DEFINE_string("hr_dir", None, "faces: a folder of 128x128 HR crops to compose from too.",
                  flag_values=fv)
  f.DEFINE_list("face_sizes", ["12", "16", "20", "24", "32", "48", "64"], "faces: crop sizes "
                "(px) in the composed photos.", flag_values=fv)
  f.DEFINE_list("detectors", ["auto", "mtcnn8", "hog2"], "faces: detectors to measure (the "
                "restoration uses `auto`): auto, hog<u>, cnn<u>, mtcnn<min face>, blazeface.",
                flag_values=fv)
  f.DEFINE_integer("faces_per_photo", 8, "faces: faces per composed photo.", flag_values=fv)
  f.DEFINE_integer("photos_per_size", 3, "faces: composed photos per crop size.",
                   flag_values=fv)
  f.DEFINE_list("restore_checkpoints", ["runs/demo"], "faces: generators whose restorations "
                "of the found faces are scored ('' for none).", flag_values=fv)
  # twin
  f.DEFINE_string("train_dir", None, "twin: training faces (release layout).", flag_values=fv)
  f.DEFINE_string("test_dir", None, "twin: test faces (release layout).", flag_values=fv)
  f.DEFINE_integer("steps", 300, "twin: training steps per side.", flag_values=fv)
  f.DEFINE_integer("width", 16, "twin: generator width C.", flag_values=fv)
  f.DEFINE_enum("stage", "psnr", ["psnr", "gan"], "twin: training stage.", flag_values=fv)
  f.DEFINE_integer("seed", 0, "twin: init and batch-order seed (of the first pair).",
                   flag_values=fv)
  f.DEFINE_integer("seeds", 1, "twin: independent pairs (seeds study).", flag_values=fv)
  f.DEFINE_integer("eval_every", 0, "twin: test both sides every N steps (and at the end).",
                   flag_values=fv)
  f.DEFINE_string("release_python", "python", "twin: a Python with torch and einops.",
                  flag_values=fv)
  f.DEFINE_string("vgg", None, "twin, GAN stage: torchvision VGG19 weights (.pth/.npz) for "
                  "both sides (default: one fixed random VGG19).", flag_values=fv)
  f.DEFINE_string("init_from", None, "twin, GAN stage: the generator both sides start from "
                  "(a release .pth/.npz).", flag_values=fv)
  f.DEFINE_integer("test_limit", None, "twin: test on the first N faces.", flag_values=fv)
  f.DEFINE_integer("patch_size", None, "twin: train on random patches of this size.",
                   flag_values=fv)
