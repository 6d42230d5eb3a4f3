"""The accelerator path without an accelerator: the pmap-ed PSNR step, the GAN step (the
generator and both discriminators' updates), and the forward, built as `train.py` builds
them on a GPU or TPU host and lowered for "cuda" and "tpu" (JAX's cross-platform
lowering): no CPU-only custom call, and the same program as with `conv_impl="xla"`."""

import re

import jax
import pytest

from configs import demo
from sfmnet_jax.benchmarks import model as bm
from sfmnet_jax.cpu import kernels

# Custom-call targets that exist only on the CPU: this project's C++ kernels, and
# XLA:CPU's LAPACK / DUCC FFT calls.
CPU_ONLY = re.compile(r"^(%s|lapack_\w+|ducc_\w+)$" % "|".join(map(re.escape, kernels.TARGETS)))


def _config(stage, conv_impl="auto"):
  cfg = demo.get_config()
  cfg.stage = stage
  cfg.model.num_features = 8
  cfg.model.num_resblocks = 1
  cfg.model.conv_impl = conv_impl
  cfg.data.patch_size = 32
  cfg.perceptual.weights = "random"
  return cfg


def _traced(kind, platform, conv_impl="auto"):
  """The step or forward as built for `platform`, traced (abstract arguments)."""
  if kind == "forward":
    fn, args = bm.forward_and_args(_config("psnr", conv_impl), 2, platform)
  else:
    fn, args = bm.train_step_and_args(_config(kind, conv_impl), 2, platform, abstract=True)
  return jax.jit(fn).trace(*args)


def _custom_calls(text):
  return set(re.findall(r"custom_call @(\w+)", text)) | set(
      re.findall(r'call_target_name = "(\w+)"', text))


@pytest.mark.parametrize("kind", ["psnr", "gan", "forward"])
def test_steps_and_forward_lower_for_accelerators_without_cpu_calls(kind):
  traced = _traced(kind, "tpu")  # what a GPU or TPU host builds: the plain Flax networks
  for platform in ("tpu", "cuda"):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    assert "stablehlo.convolution" in text and "stablehlo.fft" in text, platform
    assert not {t for t in _custom_calls(text) if CPU_ONLY.match(t)}, (platform, text[:200])
    if kind != "forward":  # gradients all-reduced over the devices' axis
      assert "all_reduce" in text, platform
    if kind == "psnr" and platform == "tpu":
      # On an accelerator host "auto" is XLA's own model: the program conv_impl="xla" gives.
      xla = _traced(kind, "tpu", "xla").lower(lowering_platforms=(platform,)).as_text()
      assert text == xla


@pytest.mark.skipif(not kernels.available(), reason="the C++ kernels could not be built here")
def test_the_cpu_build_of_the_same_step_calls_the_kernels():
  """The check above can fail: built for the CPU, the same step holds the C++ kernels."""
  calls = _custom_calls(_traced("psnr", "cpu").lower(lowering_platforms=("cpu",)).as_text())
  assert {"sfmnet_conv3x3", "sfmnet_conv3x3_kernel_grad", "sfmnet_channel_sum"} <= calls, calls
