"""`sfmnet-benchmark photo`: the whole-photo pipeline on a 1-megapixel photo.

The photo is the public-domain astronaut five times on a 1000x1000 background,
her face about 0.45 x the model's LR crop side wide (~14 px at x4: crops of
~28 px, which the model restores), rotated up to 12 degrees. Times detection
(`--detector`, MTCNN by default), LR sampling and super-resolution (after
one untimed run that compiles the generator), and the paste-back, separately.
"""

import statistics

from sfmnet_jax import runtime
from sfmnet_jax.weights import checkpoints
from sfmnet_jax.faces import photo
from sfmnet_jax.data import astronaut
from sfmnet_jax.data.degradation import HR_SIZE


def run(checkpoint: str, detector: str = "auto", repeats: int = 3, upsample: int = 2):
  model, variables, info = checkpoints.load_generator(checkpoint)
  scale = info["scale"] or 4
  image, centres = astronaut.astronaut_group_photo(5, (1000, 1000), 0.45 * HR_SIZE / scale,
                                                    seed=3)
  generators = {scale: photo.as_generator(model, variables)}
  timings, last = [], {}

  def restore():
    # Keeps only the timings and the last result: holding every result (a 16-megapixel
    # upscale each) would make each run's paste allocate fresh memory.
    last["result"] = photo.restore_photo(image, generators, detector=detector,
                                         upsample=upsample)
    timings.append(last["result"].timings)

  times = runtime.time_calls(restore, repeats, sync=lambda _: None)
  result = last["result"]
  runs = [dict(r, total=t) for r, t in zip(timings[1:], times)]  # the first compiled
  median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  restored = sum(f.status == "restored" for f in result.faces)
  out = {"benchmark": "photo", "photo_size": [1000, 1000], "faces_placed": len(centres),
         "faces_found": len(result.faces), "faces_restored": restored, "scale": scale,
         "detector": detector, "upsample": upsample, "checkpoint": checkpoint,
         "median_s": median, "runs": runs, "machine": runtime.machine_info()}
  print(f"1 MP photo, {len(centres)} faces placed, {len(result.faces)} found, {restored} "
        f"restored at x{scale} ({detector} detector, {upsample} upsamplings) on "
        f"{out['machine']['device']}:")
  print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in median.items()))
  return out
