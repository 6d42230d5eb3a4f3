r"""Benchmarks that print numbers and write JSON (speed targets are checked here, not in tests).

  sfmnet-benchmark model [--dtype=bfloat16] [--batch_sizes=1,8,32]
                                       [--conv_algorithm=auto|direct|winograd|winograd4]
                                       [--train_batch=8] [--notrain] [--remat] [--repeats=5]
  sfmnet-benchmark compare --release_dir=PATH/TO/SFMNet [--widths=16,32,64]
                                         [--conv_algorithms=auto,winograd] [--rounds=1]
  sfmnet-benchmark input [--scale=8] [--batch_size=8] [--batches=300]
  sfmnet-benchmark photo --checkpoint=runs/demo
  sfmnet-benchmark profile [--num_features=32] [--target=psnr|gan|forward]
  sfmnet-benchmark prepare [--photos=240] [--beam_pipeline_options=...] [--beam_workers=2]
  sfmnet-benchmark export [--release_dir=PATH/TO/SFMNet] [--widths=16,64] [--batch_sizes=1,8]
  sfmnet-benchmark aot --target=tpu:v5e:2x2 [--config=configs/celeba_x8_tpu_pod.py]
                       [--per_device_batch=8] [--dtypes=bfloat16,float32] [--find_max_batch]
  sfmnet-benchmark faces [--restore_checkpoints=runs/demo] [--hr_dir=DIR] [--face_sizes=12,...]
                         [--detectors=auto,mtcnn8,hog2] [--photos=3] [--faces_per_photo=8]
  sfmnet-benchmark twin --release_dir=PATH --train_dir=DIR --test_dir=DIR --steps=300
                        [--width=16] [--scale=8] [--stage=psnr|gan] [--seed=0] [--seeds=K]
                        [--eval_every=50] [--release_python=python] --output=DIR

`model`: the generator (C=64 unless --num_features, 128x128): forward latency
at batch 1 and throughput at larger batches on one device, the PSNR-stage and
GAN-stage train steps (pmap over the local devices), compile times, memory,
GFLOP/s from XLA's cost analysis, the device. The GAN step uses random VGG
weights (its speed does not depend on them).
`compare`: the authors' PyTorch release beside this port in one process, for
each width: forward at batch 1 and 8 and the PSNR step at batch 8, as ratios.
`input`: tf.data throughput of 128x128 training batches on the demo faces.
`profile`: where one call of the PSNR step (or GAN step, or forward at the
first --batch_sizes) spends its time: XLA op time by kind, by SFMNet block
and for the slowest ops (see benchmark_profile.py).
`photo`: detection, alignment and restoration of a 1-megapixel photo with five
small faces (the whole-photo pipeline of `sfmnet-infer`).
`prepare`: photos per second of `sfmnet-datasets prepare` in one process and on
Beam (default: the DirectRunner with 2 worker processes), same outputs checked,
and the estimated time of CelebA and Helen on N workers (benchmarks/prepare.py).
`export`: the ONNX export on onnxruntime beside the JAX forward (CPU plugin and
exact mode) and, with --release_dir, the release's PyTorch (benchmarks/export.py).
`aot`: the config's PSNR step, GAN step and forward compiled for a TPU topology or a
GPU description without the device: XLA's memory and post-fusion cost per device,
roofline time and images/s per chip, the largest batch that fits (benchmarks/aot.py).
`faces`: face detection's recall, false positives and seconds per megapixel by face
size on photos composed from crops with known places, and the restored faces' PSNR /
LPIPS beside the plain upscale (benchmarks/faces.py).
`twin`: the release's training and the port's side by side from the same init on the
same batches: every loss term per step, where they part, test PSNR/SSIM of both, a
seeds study with --seeds (benchmarks/twin.py; --output is its folder).
Results go to benchmark_results/<name>.json (or --output).
"""

from sfmnet_jax import runtime

if __name__ == "__main__":
  if __import__("sys").argv[1:2] == ["aot"]:  # compile for a TPU/GPU: the host stays the CPU
    from sfmnet_jax.benchmarks import aot as _aot
    _aot.prepare_environment()
  runtime.prepare_process()  # before JAX starts (CPU-only hosts: see sfmnet_jax/cpu/process.py)

# pylint: disable=g-import-not-at-top,wrong-import-position
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from sfmnet_jax import cli  # noqa: E402
from sfmnet_jax.benchmarks import commands  # noqa: E402
from sfmnet_jax.benchmarks.commands import write_json  # noqa: E402

WHAT = ("model", "compare", "input", "photo", "profile", "prepare", "export", "aot", "twin",
        "faces")


def bench_input(fv):
  import ml_collections
  from sfmnet_jax.data import pipeline as ip
  from sfmnet_jax.data import sources
  data_dir = fv.data_dir or os.path.join(tempfile.gettempdir(), "sfmnet_bench_tfds")
  scale = int(fv.scale)
  cfg = ml_collections.ConfigDict(dict(source="demo", scale=scale, tfds_data_dir=data_dir,
                                       demo_num_train=256, demo_num_test=8, demo_seed=0))
  t0 = time.perf_counter()
  split = sources.get_split(cfg, "train")
  prepare_s = time.perf_counter() - t0
  it = ip.TrainIterator(split, scale, ip.Sharding(fv.batch_size), seed=0)
  for _ in range(10):  # warm-up: first decodes
    next(it)
  t0 = time.perf_counter()
  for _ in range(fv.batches):
    batch = next(it)
  elapsed = time.perf_counter() - t0
  images = fv.batches * fv.batch_size
  result = {
      "benchmark": "input_pipeline", "scale": scale, "batch_size": fv.batch_size,
      "batches": fv.batches, "images_per_s": images / elapsed,
      "batches_per_s": fv.batches / elapsed, "prepare_s": prepare_s,
      "hr_shape": list(batch["hr"].shape), "machine": runtime.machine_info(),
  }
  print(f"input pipeline x{scale}, 128x128, batch {fv.batch_size}: "
        f"{result['images_per_s']:.0f} images/s ({result['batches_per_s']:.1f} batches/s) "
        f"on {os.cpu_count()} CPU cores")
  write_json(result, f"input_x{scale}", fv.output)
  return result


def model_config(fv, stage):
  """The default config at the flags' width, size, dtype, remat and CPU options (random VGG
  weights)."""
  from sfmnet_jax.apps import config_files
  config_files.make_importable()
  from configs import default
  cfg = default.get_config()
  cfg.dtype, cfg.stage = fv.dtype, stage
  cfg.model.num_features = fv.num_features
  cfg.model.remat = fv.remat
  cfg.model.conv_impl = fv.conv_impl
  cfg.model.conv_algorithm = fv.conv_algorithm
  cfg.model.cpu_trig = fv.cpu_trig
  cfg.data.patch_size = None if fv.size == 128 else fv.size
  cfg.perceptual.weights = "random"
  return cfg


def model_and_params(cfg, size):
  """`cfg`'s generator and its initial parameters (seed 0) on the default device."""
  import jax
  from sfmnet_jax.cpu.init import init_params
  from sfmnet_jax.training import state as training
  model = training.build_model(cfg)
  return model, jax.device_put(init_params(model, 0))


def bench_model(fv):
  from sfmnet_jax.benchmarks import model as bm

  info = runtime.machine_info()
  print(f"SFMNet C={fv.num_features}, {fv.size}x{fv.size}, {fv.dtype} compute"
        f"{', remat' if fv.remat else ''}, on {info['device']} ({info['platform']}, "
        f"{info['device_count']} devices)")
  model, params = model_and_params(model_config(fv, "psnr"), fv.size)
  rows = []

  def show(row):
    rows.append(row)
    extra = f", {row['gflop_per_s']:.0f} GFLOP/s" if row.get("gflop_per_s") else ""
    print(f"  {row['name']:<16} {row['median_s'] * 1e3:9.1f} ms/call  "
          f"{row['s_per_image'] * 1e3:8.1f} ms/image  {row['images_per_s']:8.2f} images/s  "
          f"compile {row['compile_s']:.1f} s{extra}", flush=True)

  for b in fv.batch_sizes:
    show(bm.forward(model, params, int(b), (fv.size,) * 2, fv.repeats))
  estimates = {}
  if fv.train:
    for stage in fv.stages:
      show(bm.train_step(model_config(fv, stage), fv.train_batch, max(2, fv.repeats // 2)))
  if fv.estimates:
    for stage in (fv.stages if fv.train else ["psnr"]):
      estimates.update(bm.accelerator_estimates(model_config(fv, stage), fv.train_batch,
                                                fv.batch_sizes[0]))
    print_estimates(estimates, fv.dtype)
  result = {"benchmark": "model", "num_features": fv.num_features, "size": fv.size,
            "dtype": fv.dtype, "remat": fv.remat, "conv_impl": fv.conv_impl, "rows": rows,
            "accelerator_estimates": estimates, "memory": bm.peak_memory(),
            "machine": info, "release_gflop_per_image": bm.RELEASE_GFLOP_PER_IMAGE}
  print("  peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                      for k, v in result["memory"].items()))
  name = (f"model_{info['platform']}_{fv.dtype}_c{fv.num_features}"
          + ("_remat" if fv.remat else ""))
  write_json(result, name, fv.output)
  return result


def print_estimates(estimates, dtype):
  print(f"  XLA's cost analysis as lowered for each accelerator (plain model, {dtype}), and "
        "ESTIMATED roofline times (not measured; orders of magnitude, see "
        "benchmarks/roofline.py):")
  for name, rows in estimates.items():
    for r in rows:
      print(f"    {name:<16} {r['device']:<16} {r['flops'] / 1e9:9.1f} GFLOP  "
            f"{r['bytes_accessed'] / 1e9:8.2f} GB accessed  estimate {r['estimate_s'] * 1e3:8.2f} "
            f"ms ({r['bound']}-bound)")


def bench_profile(fv):
  import jax
  from sfmnet_jax.benchmarks import model as bm
  from sfmnet_jax.benchmarks import profile as bp
  cfg = model_config(fv, "gan" if fv.target == "gan" else "psnr")
  if fv.target == "forward":
    batch = fv.batch_sizes[0]
    model, params = model_and_params(cfg, fv.size)
    compiled, args, compile_s = bm.compile_forward(model, params, batch, (fv.size,) * 2)

    def call():
      jax.block_until_ready(compiled(*args))
  else:
    batch = fv.train_batch
    compiled, args, compile_s = bm.compile_train_step(cfg, batch)
    call = bm.stepper(compiled, args)
  info = runtime.machine_info()
  title = (f"{fv.target} C={fv.num_features} batch {batch}, {fv.size}x{fv.size}, {fv.dtype}, "
           f"on {info['device']}")
  hlo = compiled.as_text()
  if fv.hlo_out:
    with open(fv.hlo_out, "w") as f:
      f.write(hlo)
  result = bp.profile(call, hlo, repeats=max(1, fv.repeats), top=fv.top)
  bp.print_profile(result, title)
  result.update(benchmark="profile", target=fv.target, num_features=fv.num_features,
                batch=batch, size=fv.size, dtype=fv.dtype, compile_s=compile_s, machine=info)
  write_json(result, f"profile_{fv.target}_c{fv.num_features}_b{batch}", fv.output)
  return result


def bench_compare(fv):
  from sfmnet_jax.benchmarks import release as benchmark_release
  result = benchmark_release.compare(fv.release_dir, [int(w) for w in fv.widths], fv.repeats,
                                     fv.conv_algorithms, fv.rounds)
  write_json(result, f"compare_{result['machine']['platform']}", fv.output)
  return result


def bench_photo(fv):
  from sfmnet_jax.benchmarks import photo as photo_benchmark
  result = photo_benchmark.run(fv.checkpoint, detector=fv.detector, repeats=fv.repeats)
  write_json(result, "photo", fv.output)
  return result


def bench_prepare(fv):
  from sfmnet_jax.benchmarks import prepare as prepare_benchmark
  result = prepare_benchmark.run(fv.photos, fv.beam_pipeline_options, fv.beam_workers,
                                 detector=fv.detector, work_dir=fv.work_dir)
  write_json(result, "prepare", fv.output)
  return result


def define_flags(fv):
  f = cli.flags
  f.DEFINE_string("output", None, "JSON path (default benchmark_results/<name>.json).",
                  flag_values=fv)
  f.DEFINE_integer("repeats", 5, "Timed calls per figure (median).", flag_values=fv)
  # model
  f.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.", flag_values=fv)
  f.DEFINE_integer("num_features", 64, "Generator width C.", flag_values=fv)
  f.DEFINE_integer("size", 128, "Image side.", flag_values=fv)
  f.DEFINE_list("batch_sizes", ["1", "8", "32"], "Forward batch sizes.", flag_values=fv)
  f.DEFINE_integer("train_batch", 8, "Global batch of the train steps.", flag_values=fv)
  f.DEFINE_list("stages", ["psnr", "gan"], "Train steps to time.", flag_values=fv)
  f.DEFINE_bool("train", True, "Time the train steps.", flag_values=fv)
  f.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "kernels"],
                "model.conv_impl: the CPU kernels or XLA's ops (model, profile).", flag_values=fv)
  f.DEFINE_enum("conv_algorithm", "auto", ["auto", "direct", "winograd", "winograd4"],
                "model.conv_algorithm, the kernels' 3x3 convs (model, profile).", flag_values=fv)
  f.DEFINE_enum("cpu_trig", "poly", ["poly", "xla"], "model.cpu_trig, the kernels' FreqBlock "
                "angle / sin / cos (model, profile).", flag_values=fv)
  f.DEFINE_bool("estimates", True, "model: also XLA's cost analysis and roofline estimates "
                "for a GPU and a TPU (lowered here; nothing runs there).", flag_values=fv)
  f.DEFINE_bool("remat", False, "Recompute the blocks in the backward pass (model.remat).", flag_values=fv)
  # profile
  f.DEFINE_string("target", None, "profile: psnr, gan or forward (default psnr); aot: "
                  "tpu:<topology> or cuda:<gpu_specs name> (default tpu:v5e:2x2).",
                  flag_values=fv)
  f.DEFINE_integer("top", 15, "How many of the slowest ops `profile` lists.", flag_values=fv)
  f.DEFINE_string("hlo_out", None, "`profile` writes the compiled HLO text here.",
                  flag_values=fv)
  # compare
  f.DEFINE_string("release_dir", None, "A checkout of github.com/wcy-cs/SFMNet.", flag_values=fv)
  f.DEFINE_list("widths", ["16", "32", "64"], "Generator widths to compare.", flag_values=fv)
  f.DEFINE_list("conv_algorithms", ["auto"], "compare: model.conv_algorithm values to time "
                "the port with ('xla': model.conv_impl='xla').", flag_values=fv)
  f.DEFINE_integer("rounds", 1, "compare: turns of release and port per width; medians "
                   "over them (a drifting machine weighs on both alike).", flag_values=fv)
  commands.define_flags(fv)
  # input
  f.DEFINE_enum("scale", "8", ["4", "8", "16"], "Upscaling factor.", flag_values=fv)
  f.DEFINE_integer("batch_size", 8, "Batch size.", flag_values=fv)
  f.DEFINE_integer("batches", 300, "Batches to time.", flag_values=fv)
  f.DEFINE_string("data_dir", None, "TFDS data dir for the demo faces.", flag_values=fv)
  # photo
  f.DEFINE_string("checkpoint", "runs/demo", "Generator for `photo`.", flag_values=fv)
  f.DEFINE_enum("detector", "auto", ["auto", "mtcnn", "dlib", "cnn", "hog"], "Face detector (photo, prepare).",
                flag_values=fv)
  # prepare
  f.DEFINE_integer("photos", 240, "prepare: raw photos to make and prepare.", flag_values=fv)
  f.DEFINE_string("beam_pipeline_options", "runner=DirectRunner,direct_num_workers=2,"
                  "direct_running_mode=multi_processing", "prepare: Beam's options.",
                  flag_values=fv)
  f.DEFINE_integer("beam_workers", 2, "prepare: the workers those options give (for the "
                   "per-worker rate).", flag_values=fv)
  f.DEFINE_string("work_dir", None, "prepare: where the photos and outputs go (default a "
                  "new temporary folder).", flag_values=fv)


def _main(fv, positional) -> int:
  if len(positional) != 1 or positional[0] not in WHAT:
    raise cli.UsageError(f"unknown benchmark {positional}: give one of {', '.join(WHAT)}")
  try:
    fv.batch_sizes = [int(b) for b in fv.batch_sizes]
  except ValueError:
    raise cli.UsageError(f"--batch_sizes takes integers, got {fv.batch_sizes}") from None
  what = positional[0]
  if what == "profile":
    fv.target = fv.target or "psnr"
    if fv.target not in ("psnr", "gan", "forward"):
      raise cli.UsageError(f"profile: --target must be psnr, gan or forward, not {fv.target!r}")
  elif what == "aot":
    fv.target = fv.target or "tpu:v5e:2x2"
  if what in ("compare", "export", "aot", "twin"):
    from sfmnet_jax.benchmarks.aot import TargetUnavailable
    from sfmnet_jax.benchmarks.release import ReleaseUnavailable
    from sfmnet_jax.benchmarks.twin import ReleaseError
    try:
      {"compare": bench_compare, "export": commands.bench_export, "aot": commands.bench_aot,
       "twin": commands.bench_twin}[what](fv)
    except (ReleaseUnavailable, TargetUnavailable, ReleaseError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    return 0
  {"model": bench_model, "input": bench_input, "photo": bench_photo,
   "profile": bench_profile, "prepare": bench_prepare, "faces": commands.bench_faces}[what](fv)
  return 0


def main(argv=None) -> int:
  return cli.run(_main, argv, define_flags, __doc__, "sfmnet-benchmark")


if __name__ == "__main__":
  sys.exit(main())
