r"""Benchmarks that print numbers and write JSON (speed targets are checked here, not in tests).

  python -m sfmnet_jax.benchmark input [--scale 8] [--batch_size 8] [--batches 300]

`input`: tf.data throughput of 128x128 training batches (decode, PIL-exact
LR and LR-up) on the demo faces.
Results go to benchmark_results/<name>.json (or --output).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

BENCHMARK_DIR = "benchmark_results"


def machine_info():
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "processor": platform.processor(),
          "jax": jax.__version__, "python": platform.python_version()}


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
  args = parser.parse_args(argv)
  bench_input(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
