"""The twin's report: JSON, the seeds study's statistics, and the pictures (matplotlib, Agg)."""

import json
import os
from typing import List

import numpy as np

from sfmnet_jax.benchmarks.twin import welch


def _mean_std(values):
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          "values": values.tolist()}


def seeds_study(pairs: List[dict]) -> dict:
  """Mean and standard deviation of the PSNR/SSIM gains over bicubic per side, and Welch's
  t-test of port vs release (each pair: both sides share init and batch order)."""
  out = {"pairs": len(pairs), "pairing": "per pair, both sides share the release's init and "
         "the batch order of its seed; pairs differ in both",
         "first_divergence_steps": [p["first_divergence_step"] for p in pairs],
         "median_rel_loss_diffs": [p["median_rel_loss_diff"] for p in pairs]}
  for metric in ("psnr_gain", "ssim_gain"):
    release = [p["release"][metric] for p in pairs]
    port = [p["port"][metric] for p in pairs]
    out[metric] = {"release": _mean_std(release), "port": _mean_std(port),
                   "welch": welch(release, port) if len(pairs) > 1 else None}
  return out


def write(result: dict, pairs: List[dict], output: str, log=print) -> None:
  name = "twin_seeds.json" if len(pairs) > 1 else "twin.json"
  if len(pairs) > 1:
    result = {**result, "pairs": pairs}
  with open(os.path.join(output, name), "w") as f:
    json.dump(result, f, indent=1)
  plot_losses(pairs[0], os.path.join(output, "twin_losses.png"))
  plot_psnr(pairs[0], os.path.join(output, "twin_psnr.png"))
  r, p = result["release"], result["port"]
  log(f"first divergence (>1%): {result['first_divergence_step']}; median relative loss "
      f"difference {result['median_rel_loss_diff']:.4%}")
  log(f"final test PSNR/SSIM: release {r['psnr']:.3f} / {r['ssim']:.4f}, port {p['psnr']:.3f} "
      f"/ {p['ssim']:.4f} (bicubic {r['bicubic_psnr']:.3f} / {r['bicubic_ssim']:.4f}); "
      f"seconds per step: release {r['seconds_per_step']:.3f}, port {p['seconds_per_step']:.3f}")
  if "seeds_study" in result:
    s = result["seeds_study"]
    for metric in ("psnr_gain", "ssim_gain"):
      m = s[metric]
      log(f"{metric} over {s['pairs']} pairs: release {m['release']['mean']:.4f} +- "
          f"{m['release']['std']:.4f}, port {m['port']['mean']:.4f} +- {m['port']['std']:.4f}; "
          f"Welch t {m['welch']['t']:.2f}, p {m['welch']['p_value']:.3f}")
  log(f"wrote {os.path.join(output, name)}, twin_losses.png, twin_psnr.png")


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_losses(pair: dict, path: str) -> None:
  """Every loss term of both sides per step, log scale (release solid, port dashed)."""
  plt = _pyplot()
  terms = [k for k in pair["curves"]["release"][0] if k != "seconds"]
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for i, term in enumerate(terms):
    colour = f"C{i}"
    for side, style in (("release", "-"), ("port", "--")):
      values = [abs(c[term]) for c in pair["curves"][side] if term in c]
      if values:
        ax.plot(np.arange(1, len(values) + 1), values, style, color=colour, linewidth=1,
                label=f"{term} ({side})")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"Twin training, seed {pair['seed']}: release (solid) and port (dashed)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_psnr(pair: dict, path: str) -> None:
  """Test PSNR of both sides (and bicubic) at every evaluation."""
  plt = _pyplot()
  steps = [e["step"] for e in pair["evals"]]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for side, style in (("release", "o-"), ("port", "s--")):
    ax.plot(steps, [e[side]["psnr"] for e in pair["evals"]], style, label=side)
  ax.axhline(pair["evals"][-1]["release"]["bicubic_psnr"], color="grey", linewidth=1,
             label="bicubic")
  ax.set_xlabel("step")
  ax.set_ylabel("test PSNR (dB, Y)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
