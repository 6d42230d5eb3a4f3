"""`sfmnet-benchmark input`: tf.data throughput of 128x128 training batches on the demo faces."""

import os
import tempfile
import time

from sfmnet_jax import runtime

WARMUP_BATCHES = 10  # the first decodes


def run(scale: int, batch_size: int, batches: int, data_dir=None) -> dict:
  """Images and batches per second of the training pipeline (`pipeline.TrainIterator`) on
  256 demo faces at `scale`, after WARMUP_BATCHES untimed batches."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or os.path.join(tempfile.gettempdir(), "sfmnet_bench_tfds")
  cfg = ml_collections.ConfigDict(dict(source="demo", scale=scale, tfds_data_dir=data_dir,
                                       demo_num_train=256, demo_num_test=8, demo_seed=0))
  t0 = time.perf_counter()
  split = sources.get_split(cfg, "train")
  prepare_s = time.perf_counter() - t0
  it = pipeline.TrainIterator(split, scale, pipeline.Sharding(batch_size), seed=0)
  last = []
  elapsed = sum(runtime.time_calls(lambda: last.append(next(it)), batches, warmup=WARMUP_BATCHES,
                                   sync=lambda _: None))
  images = batches * batch_size
  result = {
      "benchmark": "input_pipeline", "scale": scale, "batch_size": batch_size,
      "batches": batches, "images_per_s": images / elapsed,
      "batches_per_s": batches / elapsed, "prepare_s": prepare_s,
      "hr_shape": list(last[-1]["hr"].shape), "machine": runtime.machine_info(),
  }
  print(f"input pipeline x{scale}, 128x128, batch {batch_size}: "
        f"{result['images_per_s']:.0f} images/s ({result['batches_per_s']:.1f} batches/s) "
        f"on {os.cpu_count()} CPU cores")
  return result
