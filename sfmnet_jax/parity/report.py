"""The twin's report: its JSON, the seeds study, and the pictures (matplotlib, Agg)."""

import json
import os
from typing import List

import numpy as np

from sfmnet_jax.parity import stats


def _mean_std(values):
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          "values": values.tolist()}


def seeds_study(pairs: List[dict], margin_db: float) -> dict:
  """The pairs analysed as pairs (both sides of a pair share the release's init and the
  batch order of its seed; pairs differ in both): per side the mean and standard deviation
  of the PSNR/SSIM gains over bicubic, and the paired equivalence test of the PSNR gains
  (port - release within each pair) against +-`margin_db`."""
  out = {"pairs": len(pairs), "pairing": "per pair, both sides share the release's init and "
         "the batch order of its seed; pairs differ in both",
         "seeds": [p["seed"] for p in pairs],
         "first_divergence_steps": [p["first_divergence_step"] for p in pairs],
         "median_rel_loss_diffs": [p["median_rel_loss_diff"] for p in pairs],
         "abs_psnr_diff_over_gain": [p["abs_psnr_diff_over_gain"] for p in pairs]}
  for metric in ("psnr_gain", "ssim_gain"):
    release = [p["release"][metric] for p in pairs]
    port = [p["port"][metric] for p in pairs]
    out[metric] = {"release": _mean_std(release), "port": _mean_std(port)}
  # Is a drift in the loss terms one-sided across pairs (systematic) or of either sign
  # (chance)? Each pair's mean signed relative difference (port - release) per term.
  out["terms_mean_signed_rel_diff"] = {
      term: [p["terms"][term]["mean_signed_rel_diff"] for p in pairs]
      for term in pairs[0]["terms"] if all(term in p["terms"] for p in pairs)}
  out["equivalence"] = stats.paired_equivalence(
      [p["release"]["psnr_gain"] for p in pairs], [p["port"]["psnr_gain"] for p in pairs],
      margin_db)
  return out


def _number(value, spec):
  return "n/a" if value is None else format(value, spec)


def reference_label(result: dict) -> str:
  """What the twin's reference side (its "release" entries) was: "release" or "port (...)"."""
  return result.get("reference", {}).get("label", "release")


def write(result: dict, pairs: List[dict], output: str, log=print) -> None:
  name = "twin_seeds.json" if len(pairs) > 1 else "twin.json"
  ref = reference_label(result)
  if len(pairs) > 1:
    result = {**result, "pairs": pairs}
  with open(os.path.join(output, name), "w") as f:
    json.dump(result, f, indent=1)
  plot_losses(pairs[0], os.path.join(output, "twin_losses.png"), ref)
  plot_psnr(pairs[0], os.path.join(output, "twin_psnr.png"), ref)
  if "seeds_study" in result:
    plot_differences(result["seeds_study"]["equivalence"],
                     os.path.join(output, "twin_differences.png"), ref)
  r, p = result["release"], result["port"]
  log(f"first divergence (>1%): {result['first_divergence_step']}; median relative loss "
      f"difference {result['median_rel_loss_diff']:.4%}")
  log(f"final test PSNR/SSIM: {ref} {r['psnr']:.3f} / {r['ssim']:.4f}, port {p['psnr']:.3f} "
      f"/ {p['ssim']:.4f} (bicubic {r['bicubic_psnr']:.3f} / {r['bicubic_ssim']:.4f}); "
      f"seconds per step: {ref} {r['seconds_per_step']:.3f}, port {p['seconds_per_step']:.3f}")
  last = result["evals"][-1]
  ratio, distance = result["abs_psnr_diff_over_gain"], last["parameters"]["generator"]["global"]
  log(f"gains over bicubic: {ref} {r['psnr_gain']:+.3f} dB, port {p['psnr_gain']:+.3f} dB; "
      f"|difference| / gain {_number(ratio, '.3f')}; outputs "
      f"{last['outputs']['psnr_between']:.1f} dB apart; parameter distance "
      f"{_number(distance, '.4f')}")
  if "seeds_study" in result:
    s = result["seeds_study"]
    for metric in ("psnr_gain", "ssim_gain"):
      m = s[metric]
      log(f"{metric} over {s['pairs']} pairs: {ref} {m['release']['mean']:.4f} +- "
          f"{m['release']['std']:.4f}, port {m['port']['mean']:.4f} +- {m['port']['std']:.4f}")
    e = s["equivalence"]
    log(f"paired PSNR-gain difference (port - {ref}) {e['mean_difference']:+.4f} dB, "
        f"{e['confidence']:.0%} interval [{e['interval'][0]:+.4f}, {e['interval'][1]:+.4f}] dB, "
        f"margin +-{e['margin']} dB: {e['verdict']}")
  log(f"wrote {os.path.join(output, name)}, twin_losses.png, twin_psnr.png"
      + (", twin_differences.png" if "seeds_study" in result else ""))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_losses(pair: dict, path: str, ref: str = "release") -> None:
  """Every loss term of both sides per step, log scale (the reference `ref` solid, the port
  dashed)."""
  plt = _pyplot()
  terms = [k for k in pair["curves"]["release"][0] if k not in ("seconds", "finite")]
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for i, term in enumerate(terms):
    colour = f"C{i}"
    for side, style in (("release", "-"), ("port", "--")):
      values = [abs(c[term]) for c in pair["curves"][side] if term in c]
      if values:
        ax.plot(np.arange(1, len(values) + 1), values, style, color=colour, linewidth=1,
                label=f"{term} ({ref if side == 'release' else side})")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(f"Twin training, seed {pair['seed']}: {ref} (solid) and port (dashed)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_psnr(pair: dict, path: str, ref: str = "release") -> None:
  """Test PSNR of both sides (and bicubic) at every evaluation."""
  plt = _pyplot()
  steps = [e["step"] for e in pair["evals"]]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for side, style in (("release", "o-"), ("port", "s--")):
    ax.plot(steps, [e[side]["psnr"] for e in pair["evals"]], style,
            label=ref if side == "release" else side)
  ax.axhline(pair["evals"][-1]["release"]["bicubic_psnr"], color="grey", linewidth=1,
             label="bicubic")
  ax.set_xlabel("step")
  ax.set_ylabel("test PSNR (dB, Y)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_differences(equivalence: dict, path: str, ref: str = "release") -> None:
  """Each pair's PSNR-gain difference (port - the reference `ref`), their mean with its confidence
  interval, and the equivalence margin: centred on zero or to one side."""
  plt = _pyplot()
  d = equivalence["differences"]
  fig, ax = plt.subplots(figsize=(7, 2.8))
  ax.plot(d, np.zeros(len(d)), "o", alpha=0.7, label=f"pairs (port - {ref})")
  low, high = equivalence["interval"]
  ax.errorbar([equivalence["mean_difference"]], [0.4],
              xerr=[[equivalence["mean_difference"] - low], [high - equivalence["mean_difference"]]],
              fmt="s", capsize=4, color="C1",
              label=f"mean, {equivalence['confidence']:.0%} interval")
  for x in (-equivalence["margin"], equivalence["margin"]):
    ax.axvline(x, color="grey", linestyle="--", linewidth=1)
  ax.axvline(0, color="black", linewidth=0.5)
  ax.set_ylim(-0.5, 1)
  ax.set_yticks([])
  ax.set_xlabel(f"PSNR gain difference (dB); dashed: margin, verdict {equivalence['verdict']}")
  ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
