r"""Benchmarks that print numbers and write JSON (speed targets are checked here, not in tests).

  python -m sfmnet_jax.benchmark model [--dtype bfloat16] [--batch_sizes 1,8,32]
                                       [--train_batch 8] [--no_train] [--repeats 5]
  python -m sfmnet_jax.benchmark input [--scale 8] [--batch_size 8] [--batches 300]

`model`: the release-size generator (C=64, 128x128): forward latency at batch 1
and throughput at larger batches on one device, the PSNR-stage and GAN-stage
train steps (pmap over the local devices), compile times, memory, GFLOP/s from
XLA's cost analysis, the device. The GAN step uses random VGG weights (its
speed does not depend on them).
`input`: tf.data throughput of 128x128 training batches (decode, PIL-exact
LR and LR-up) on the demo faces.
Results go to benchmark_results/<name>.json (or --output).
"""

import argparse
import json
import os
import sys
import tempfile
import time

BENCHMARK_DIR = "benchmark_results"


def machine_info():
  from sfmnet_jax import runtime  # pylint: disable=g-import-not-at-top
  return runtime.machine_info()


def write_json(result, name, output=None):
  path = output or os.path.join(BENCHMARK_DIR, f"{name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")


def bench_input(args):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sfmnet_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.datasets import sources  # pylint: disable=g-import-not-at-top
  data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "sfmnet_bench_tfds")
  cfg = ml_collections.ConfigDict(dict(source="demo", scale=args.scale, tfds_data_dir=data_dir,
                                       demo_num_train=256, demo_num_test=8, demo_seed=0))
  t0 = time.perf_counter()
  split = sources.get_split(cfg, "train")
  prepare_s = time.perf_counter() - t0
  it = ip.TrainIterator(split, args.scale, ip.Sharding(args.batch_size), seed=0)
  for _ in range(10):  # warm-up: tf.data autotuning, first decodes
    next(it)
  t0 = time.perf_counter()
  for _ in range(args.batches):
    batch = next(it)
  elapsed = time.perf_counter() - t0
  images = args.batches * args.batch_size
  result = {
      "benchmark": "input_pipeline", "scale": args.scale, "batch_size": args.batch_size,
      "batches": args.batches, "images_per_s": images / elapsed,
      "batches_per_s": args.batches / elapsed, "prepare_s": prepare_s,
      "hr_shape": list(batch["hr"].shape), "machine": machine_info(),
  }
  print(f"input pipeline x{args.scale}, 128x128, batch {args.batch_size}: "
        f"{result['images_per_s']:.0f} images/s ({result['batches_per_s']:.1f} batches/s) "
        f"on {os.cpu_count()} CPU cores")
  write_json(result, f"input_x{args.scale}", args.output)
  return result


def bench_model(args):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from sfmnet_jax import benchmark_model as bm, training  # pylint: disable=g-import-not-at-top
  def config_for(stage):
    cfg = default.get_config()
    cfg.dtype, cfg.stage = args.dtype, stage
    cfg.model.num_features = args.num_features
    cfg.data.patch_size = None if args.size == 128 else args.size
    cfg.perceptual.weights = "random"
    return cfg

  info = machine_info()
  print(f"SFMNet C={args.num_features}, {args.size}x{args.size}, {args.dtype} compute, "
        f"on {info['device']} ({info['platform']}, {info['device_count']} devices)")
  model = training.build_model(config_for("psnr"))
  params = jax.device_put(training.init_generator(model, 0, (args.size,) * 2)["params"])
  rows = []

  def show(row):
    rows.append(row)
    extra = f", {row['gflop_per_s']:.0f} GFLOP/s" if row.get("gflop_per_s") else ""
    print(f"  {row['name']:<16} {row['median_s'] * 1e3:9.1f} ms/call  "
          f"{row['s_per_image'] * 1e3:8.1f} ms/image  {row['images_per_s']:8.2f} images/s  "
          f"compile {row['compile_s']:.1f} s{extra}", flush=True)

  for b in args.batch_sizes:
    show(bm.forward(model, params, b, (args.size,) * 2, args.repeats))
  if args.train:
    for stage in ("psnr", "gan"):
      show(bm.train_step(config_for(stage), args.train_batch, max(2, args.repeats // 2)))
  result = {"benchmark": "model", "num_features": args.num_features, "size": args.size,
            "dtype": args.dtype, "rows": rows, "memory": bm.peak_memory(), "machine": info,
            "release_gflop_per_image": bm.RELEASE_GFLOP_PER_IMAGE}
  print("  peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                      for k, v in result["memory"].items()))
  name = f"model_{info['platform']}_{args.dtype}_c{args.num_features}"
  write_json(result, name, args.output)
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="what", required=True)
  p_in = sub.add_parser("input", help="tf.data throughput")
  p_in.add_argument("--scale", type=int, default=8, choices=(4, 8, 16))
  p_in.add_argument("--batch_size", type=int, default=8)
  p_in.add_argument("--batches", type=int, default=300)
  p_in.add_argument("--data_dir", default=None)
  p_in.add_argument("--output", default=None)
  p_m = sub.add_parser("model", help="generator forward and train-step speed")
  p_m.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p_m.add_argument("--num_features", type=int, default=64)
  p_m.add_argument("--size", type=int, default=128)
  p_m.add_argument("--batch_sizes", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1, 8, 32])
  p_m.add_argument("--train_batch", type=int, default=8)
  p_m.add_argument("--no_train", dest="train", action="store_false")
  p_m.add_argument("--repeats", type=int, default=5)
  p_m.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  {"input": bench_input, "model": bench_model}[args.what](args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
