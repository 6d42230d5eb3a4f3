"""The twin's statistics: where two loss curves part, how far apart two trained networks and
their outputs are, and whether paired runs are equivalent. Pure numpy (and scipy's t
distribution): no JAX, no torch.
"""

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

DIVERGENCE = 0.01


def relative_differences(release: Sequence[float], port: Sequence[float]) -> np.ndarray:
  """|port - release| / |release| per step (NaN where either is not finite)."""
  r, p = np.asarray(release, np.float64), np.asarray(port, np.float64)
  if r.shape != p.shape or not r.size:
    raise ValueError(f"curves of {r.shape} and {p.shape} steps cannot be compared")
  return np.abs(p - r) / np.maximum(np.abs(r), 1e-12)


def compare_curves(release: Sequence[float], port: Sequence[float],
                   tolerance: float = DIVERGENCE) -> Dict[str, Optional[float]]:
  """`first_divergence_step` (first step whose values differ by more than `tolerance`
  relative to the release's, or None; a non-finite value counts as diverged) and the
  median and largest relative difference over all steps."""
  rel = relative_differences(release, port)
  over = np.flatnonzero(~(rel <= tolerance))
  finite = rel[np.isfinite(rel)]
  return {"first_divergence_step": int(over[0]) if over.size else None,
          "median_rel_loss_diff": float(np.median(finite)) if finite.size else None,
          "max_rel_loss_diff": float(finite.max()) if finite.size else None}


def term_divergence(release: Sequence[Mapping[str, float]], port: Sequence[Mapping[str, float]],
                    tolerance: float = DIVERGENCE) -> Dict[str, dict]:
  """Per loss term present on both sides: `first_step_over` (the first step whose values
  differ by more than `tolerance` relative, or None), the median relative difference, and
  the mean signed relative difference (port - release) / |release| (a drift to one side
  shows there, noise averages out)."""
  terms = [k for k in release[0] if k in port[0] and k not in ("seconds", "finite")]
  out = {}
  for term in terms:
    r = np.array([c[term] for c in release], np.float64)
    p = np.array([c[term] for c in port], np.float64)
    summary = compare_curves(r, p, tolerance)
    signed = (p - r) / np.maximum(np.abs(r), 1e-12)
    signed = signed[np.isfinite(signed)]
    out[term] = {"first_step_over": summary["first_divergence_step"],
                 "median_rel_diff": summary["median_rel_loss_diff"],
                 "max_rel_diff": summary["max_rel_loss_diff"],
                 "mean_signed_rel_diff": float(signed.mean()) if signed.size else None}
  return out


def parameter_distance(release: Mapping[str, np.ndarray], port: Mapping[str, np.ndarray],
                       init: Mapping[str, np.ndarray]) -> dict:
  """||theta_release - theta_port|| / ||theta_release - theta_init|| over all tensors
  (flat {name: array} of the same names), and the tensor where that ratio is largest
  (among tensors the release moved)."""
  if set(release) != set(port) or set(release) != set(init):
    raise ValueError("the parameter sets differ: "
                     f"{sorted(set(release) ^ set(port) | set(release) ^ set(init))[:5]}")
  apart = moved = 0.0
  worst = (None, 0.0)
  for name in sorted(release):
    r, p, i = (np.asarray(t, np.float64) for t in (release[name], port[name], init[name]))
    a, m = float(np.sum((r - p) ** 2)), float(np.sum((r - i) ** 2))
    apart, moved = apart + a, moved + m
    if m > 0 and np.sqrt(a / m) > worst[1]:
      worst = (name, float(np.sqrt(a / m)))
  return {"global": float(np.sqrt(apart / moved)) if moved else None,
          "release_moved": float(np.sqrt(moved)), "apart": float(np.sqrt(apart)),
          "worst_tensor": worst[0], "worst_tensor_ratio": worst[1]}


def gradient_agreement(release: Mapping[str, np.ndarray], port: Mapping[str, np.ndarray]
                       ) -> Dict[str, object]:
  """Two gradients of the same loss at the same weights, tensor by tensor: the median and
  largest relative difference |g_port - g_release| / |g_release| (Frobenius norms; the
  worst tensor named), the global one over all tensors, and the cosine of the whole
  gradients (1: the same direction)."""
  if set(release) != set(port):
    raise ValueError(f"the gradients name other tensors: {sorted(set(release) ^ set(port))[:5]}")
  errors, apart, norm, dot, port_norm = {}, 0.0, 0.0, 0.0, 0.0
  for name in release:
    r, p = np.asarray(release[name], np.float64), np.asarray(port[name], np.float64)
    if r.shape != p.shape:
      raise ValueError(f"{name}: gradients of shapes {r.shape} and {p.shape}")
    d2, r2 = float(np.sum((p - r) ** 2)), float(np.sum(r * r))
    apart, norm, dot, port_norm = apart + d2, norm + r2, dot + float(np.sum(r * p)), \
        port_norm + float(np.sum(p * p))
    if r2 > 0:
      errors[name] = float(np.sqrt(d2 / r2))
  worst = max(errors.items(), key=lambda kv: kv[1]) if errors else (None, None)
  return {"median_rel_diff": float(np.median(list(errors.values()))) if errors else None,
          "worst_tensor": worst[0], "worst_rel_diff": worst[1],
          "global_rel_diff": float(np.sqrt(apart / norm)) if norm else None,
          "cosine": dot / np.sqrt(norm * port_norm) if norm and port_norm else None}


def output_agreement(release: np.ndarray, port: np.ndarray) -> Dict[str, float]:
  """The two sides' outputs (images in [0, 1]) against each other: PSNR over all pixels and
  channels (one side taken as the reference; inf where they are equal) and the largest
  absolute difference."""
  r, p = np.asarray(release, np.float64), np.asarray(port, np.float64)
  if r.shape != p.shape:
    raise ValueError(f"outputs of shapes {r.shape} and {p.shape}")
  mse = float(np.mean((r - p) ** 2))
  return {"psnr_between": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
          "max_abs_diff": float(np.max(np.abs(r - p)))}


def paired_equivalence(release: Sequence[float], port: Sequence[float], margin: float,
                       confidence: float = 0.90) -> dict:
  """Pairs analysed as pairs: the differences d = port - release within each pair, their
  mean, standard deviation, the `confidence` interval of the mean (Student's t), and the
  two one-sided tests (TOST) of |mean| < `margin` at level (1 - confidence) / 2 each: the
  verdict is "equivalent" when both reject (the interval lies inside +-margin),
  "different" when the interval lies outside it, else "undecided"."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  d = np.asarray(port, np.float64) - np.asarray(release, np.float64)
  n = d.size
  if n < 2:
    raise ValueError("an equivalence test needs at least 2 pairs")
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  se = sd / np.sqrt(n)
  alpha = (1.0 - confidence) / 2
  if se == 0:
    low = high = mean
    p_lower = 0.0 if mean > -margin else 1.0
    p_upper = 0.0 if mean < margin else 1.0
  else:
    half = float(stats.t.ppf(1 - alpha, n - 1)) * se
    low, high = mean - half, mean + half
    p_lower = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: mean <= -margin
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: mean >= +margin
  if max(p_lower, p_upper) < alpha:
    verdict = "equivalent"
  elif low > margin or high < -margin:
    verdict = "different"
  else:
    verdict = "undecided"
  return {"pairs": int(n), "differences": d.tolist(), "mean_difference": mean, "std": sd,
          "confidence": confidence, "interval": [float(low), float(high)], "margin": margin,
          "tost_p_values": [p_lower, p_upper], "verdict": verdict}
