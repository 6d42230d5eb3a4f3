"""Running a generator over an evaluation split: per-image metrics, means, sample grids.

Every image is visited exactly once across devices and processes (the
pipeline pads the last batch and masks it); the bicubic baseline (LR-up vs
HR) goes through the same metric code as the model's output.
"""

from typing import Callable, Dict, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from sfmnet_jax.data import degradation
from sfmnet_jax.data import pipeline
from sfmnet_jax.evaluation import metrics
from sfmnet_jax.data import astronaut
from sfmnet_jax.data.sources import Split
from sfmnet_jax.model.generator import jitted_apply
from sfmnet_jax.data.visualize import grid

METRIC_KEYS = ("psnr", "ssim", "ssim_matlab")


def predict_split(p_forward: Callable, p_params, split: Split, scale: int, sharding: pipeline.Sharding,
                  limit: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of this process's images with `sr` and `fre` added, padding removed (numpy)."""
  for batch in pipeline.eval_dataset(split, scale, sharding, limit).as_numpy_iterator():
    sr, fre = p_forward(p_params, batch["lr_up"])
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
    flat["sr"] = np.asarray(sr).reshape(-1, *sr.shape[2:])
    flat["fre"] = np.asarray(fre).reshape(-1, *fre.shape[2:])
    keep = flat.pop("mask") > 0
    yield {k: v[keep] for k, v in flat.items()}


def image_metrics(batch, round_y: bool = True) -> Dict[str, np.ndarray]:
  """Per-image metrics of a predicted batch: the model's and the bicubic baseline's."""
  model = metrics.y_metrics(batch["sr"], batch["hr"], round_y=round_y)
  bicubic = metrics.y_metrics(batch["lr_up"], batch["hr"], round_y=round_y)
  out = dict(model)
  out.update({f"bicubic_{k}": v for k, v in bicubic.items()})
  return out


def evaluate_split(p_forward, p_params, split, scale, sharding, limit=None,
                   per_image_fn: Optional[Callable] = None, round_y: bool = True):
  """Means over every image of `split` (all processes) and this process's per-image values.

  `per_image_fn(batch, values)` may add values (e.g. LPIPS) or write outputs.
  `round_y` (the release's protocol) rounds the Y channel to integers.
  Returns {"mean": {...}, "per_image": {index: {...}}, "count": n}.
  """
  per_image = {}
  for batch in predict_split(p_forward, p_params, split, scale, sharding, limit):
    values = image_metrics(batch, round_y)
    if per_image_fn is not None:
      values.update(per_image_fn(batch, values) or {})
    for i, index in enumerate(batch["index"]):
      per_image[int(index)] = {k: float(v[i]) for k, v in values.items()}
  keys = sorted(next(iter(per_image.values()))) if per_image else list(METRIC_KEYS)
  local = np.array([[sum(v[k] for v in per_image.values()) for k in keys] + [len(per_image)]],
                   np.float64)
  if jax.process_count() > 1:
    local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys) + 1)
  totals = local.sum(axis=0)
  count = int(totals[-1])
  mean = {k: totals[i] / max(count, 1) for i, k in enumerate(keys)}
  return {"mean": mean, "per_image": per_image, "count": count}


def sample_images(split: Split, scale: int, n: int):
  """HR, LR and LR-up of the first n images of `split` plus the astronaut portrait (a real face)."""
  sharding = pipeline.Sharding(1)
  hrs = [b["hr"][0, 0] for b, _ in zip(pipeline.eval_dataset(split, scale, sharding).as_numpy_iterator(),
                                      range(n))]
  hrs.append(astronaut.astronaut_face().astype(np.float32) / 255.0)
  out = {"hr": [], "lr": [], "lr_up": []}
  for hr in hrs:
    hr8 = metrics.quantize(hr)
    lr, lr_up = degradation.degrade(hr8, scale)
    out["hr"].append(hr8)
    out["lr"].append(lr)
    out["lr_up"].append(lr_up)
  return {k: np.stack(v) for k, v in out.items()}


def sample_grid(model, params, split: Split, scale: int, n: int) -> np.ndarray:
  """Rows of LR-up | SR | frequency branch | HR: the first n test faces and the astronaut."""
  images = sample_images(split, scale, n)
  lr_up = images["lr_up"].astype(np.float32) / 255.0
  sr, fre = jitted_apply(model)({"params": params}, lr_up)
  rows = [[lr_up[i], np.asarray(sr[i]), np.asarray(fre[i]), images["hr"][i]]
          for i in range(len(lr_up))]
  return grid(rows)
