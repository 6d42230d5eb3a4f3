"""Image-quality metrics computed as the published numbers were (reference: "Metrics").

PSNR and SSIM on the Y channel of YCbCr (ITU-R BT.601 as MATLAB's
`rgb2ycbcr`), on uint8-quantised RGB (`round(clip(x*255))`), after cropping
8 pixels from every border; PSNR in float64 with peak 255.

Y is rounded to integers by default, as the release's `rgb2ycbcr` does for
uint8 input (`(rgb . [65.481, 128.553, 24.966]) / 255 + 16`, rounded, cast to
uint8): the published numbers depend on it (Helen x8 bicubic: 23.777 / 0.6503
rounded, 23.779 / 0.6508 with float Y). `round_y=False` keeps Y as float.
SSIM comes from scikit-image, two ways:
  - "release": `structural_similarity(data_range=255)` with its default 7x7
    uniform window (what the authors' code reports);
  - "matlab": the 11x11 Gaussian window (sigma 1.5) of MATLAB/BasicSR.
"""

from typing import Dict

import numpy as np
from skimage.metrics import structural_similarity

from sfmnet_jax.data.image_io import quantize

CROP = 8
Y_COEFFICIENTS = (65.481, 128.553, 24.966)
SSIM_KINDS = {
    "release": {},
    "matlab": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False},
}


def rgb_to_y(image, round_y: bool = True) -> np.ndarray:
  """MATLAB rgb2ycbcr's Y (16..235) of a uint8 (..., 3) RGB image, as float64.

  Computed in the release's order of operations, so that rounding to integers
  (`round_y`, the default) gives its values exactly.
  """
  y = np.dot(np.asarray(image, np.uint8), list(Y_COEFFICIENTS)) / 255.0 + 16.0
  return np.round(y) if round_y else y


def _crop(y: np.ndarray, crop: int) -> np.ndarray:
  return y[..., crop:-crop, crop:-crop] if crop else y


def _pair_y(sr, hr, crop, round_y):
  sr, hr = quantize(sr), quantize(hr)
  if sr.shape != hr.shape:
    raise ValueError(f"SR and HR sizes differ: {sr.shape} vs {hr.shape}")
  if min(sr.shape[-3:-1]) <= 2 * crop:
    raise ValueError(f"images of {sr.shape[-3:-1]} are too small for a {crop}-pixel crop")
  return _crop(rgb_to_y(sr, round_y), crop), _crop(rgb_to_y(hr, round_y), crop)


def psnr_y(sr, hr, crop: int = CROP, round_y: bool = True) -> np.ndarray:
  """Per-image PSNR (dB) on Y; (..., H, W, 3) inputs, float in [0, 1] or uint8."""
  a, b = _pair_y(sr, hr, crop, round_y)
  mse = np.mean((a - b) ** 2, axis=(-2, -1))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(255.0 ** 2 / mse)


def ssim_y(sr, hr, crop: int = CROP, kind: str = "release", round_y: bool = True) -> np.ndarray:
  """Per-image SSIM on Y with scikit-image ("release": 7x7 uniform; "matlab": 11x11 Gaussian)."""
  if kind not in SSIM_KINDS:
    raise ValueError(f"SSIM kind must be one of {sorted(SSIM_KINDS)}, got {kind!r}")
  a, b = _pair_y(sr, hr, crop, round_y)
  lead = a.shape[:-2]
  a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
  values = [structural_similarity(x, y, data_range=255.0, **SSIM_KINDS[kind])
            for x, y in zip(a, b)]
  return np.asarray(values, np.float64).reshape(lead)


def y_metrics(sr, hr, crop: int = CROP, round_y: bool = True) -> Dict[str, np.ndarray]:
  """PSNR and both SSIMs, per image."""
  return {"psnr": psnr_y(sr, hr, crop, round_y),
          "ssim": ssim_y(sr, hr, crop, "release", round_y),
          "ssim_matlab": ssim_y(sr, hr, crop, "matlab", round_y)}
