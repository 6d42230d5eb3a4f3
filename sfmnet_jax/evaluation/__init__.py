"""The paper's metrics: PSNR/SSIM as the release computes them (`metrics.py`), LPIPS and
identity similarity (`perceptual.py`), a generator run over a split (`splits.py`) and
the metric table for any checkpoint (`report.py`, what `evaluate.py` prints)."""
