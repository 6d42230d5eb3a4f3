"""The accelerator path without an accelerator: the pmap-ed PSNR step, the GAN step (the
generator and both discriminators' updates), and the forward, built as `train.py` builds
them on a GPU or TPU host and lowered for "cuda" and "tpu" (JAX's cross-platform
lowering): no CPU-only custom call, and the same program as with `conv_impl="xla"`."""

import re

import jax
import pytest

from configs import demo
from sfmnet_jax.accelerators import programs
from sfmnet_jax.accelerators.cost import CPU_ONLY
from sfmnet_jax.cpu import kernels


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
  program = programs.build(_config("psnr" if kind == "forward" else kind, conv_impl), kind,
                           platform)
  fn, args = programs.on_one_device(program, 2, 32)
  return jax.jit(fn).trace(*args)


def _custom_calls(text):
  return set(re.findall(r"custom_call @(\w+)", text)) | set(
      re.findall(r'call_target_name = "(\w+)"', text))


@pytest.mark.parametrize("kind", ["psnr", "gan", "forward"])
def test_steps_and_forward_lower_for_accelerators_without_cpu_calls(kind):
  for platform in ("tpu", "cuda"):
    # What a GPU or TPU host builds: the plain Flax networks; on a TPU the FreqBlocks'
    # transforms are DFT products (spectral_transform="auto"), the loss keeps its FFTs.
    text = _traced(kind, platform).lower(lowering_platforms=(platform,)).as_text()
    assert "stablehlo.convolution" in text, platform
    assert ("stablehlo.fft" in text) == (platform == "cuda" or kind != "forward"), platform
    assert not {t for t in _custom_calls(text) if CPU_ONLY.match(t)}, (platform, text[:200])
    if kind != "forward":  # gradients all-reduced over the devices' axis
      assert "all_reduce" in text, platform
    if kind == "psnr" and platform == "tpu":
      # On an accelerator host "auto" is XLA's own model: the program conv_impl="xla" gives.
      xla = _traced(kind, "tpu", "xla").lower(lowering_platforms=(platform,)).as_text()
      assert text == xla


@pytest.mark.skipif(not kernels.available(), reason="the C++ kernels could not be built here")
def test_the_cpu_build_of_the_same_step_calls_the_kernels():
  """The check above can fail: built for the CPU, the same step holds the C++ kernels, whose
  names the CPU-only pattern knows."""
  calls = _custom_calls(_traced("psnr", "cpu").lower(lowering_platforms=("cpu",)).as_text())
  assert {"sfmnet_conv3x3", "sfmnet_conv3x3_kernel_grad", "sfmnet_channel_sum"} <= calls, calls
  assert all(CPU_ONLY.match(t) for t in kernels.TARGETS)
  assert CPU_ONLY.match("ducc_fft") and not CPU_ONLY.match("tpu_custom_call")


def test_an_accelerator_host_never_imports_the_cpu_plugin(tmp_path):
  """With JAX_PLATFORMS naming an accelerator, the entry points' process set-up and every
  program built for it (the plain networks, their initial state) import none of the CPU
  plugin's modules (its door, the package `sfmnet_jax.cpu`, holds the check)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from helpers import REPO  # pylint: disable=g-import-not-at-top
  code = (
      "import sys\n"
      "from sfmnet_jax import runtime\n"
      "runtime.prepare_process()\n"
      "from sfmnet_jax.apps import config_files\n"
      "config_files.make_importable()\n"
      "from configs import demo\n"
      "from sfmnet_jax.accelerators import programs\n"
      "cfg = demo.get_config()\n"
      "cfg.model.num_features, cfg.model.num_resblocks, cfg.data.patch_size = 8, 1, 32\n"
      "cfg.perceptual.weights = 'random'\n"
      "for name in ('psnr', 'gan', 'forward'):\n"
      "  programs.build(cfg, name, 'tpu')\n"
      "print(sorted(m for m in sys.modules if m.startswith('sfmnet_jax.cpu.')))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "tpu"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_exact_mode_initialises_as_an_accelerator_host():
  """`conv_impl="xla"` on a CPU starts from the same parameters as a GPU or TPU host for the
  same seed (the plain modules' own initialisers); the CPU plugin's accelerated modules
  draw theirs on the host (another random stream)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top

  def initial(conv_impl, platform):
    cfg = _config("gan", conv_impl)
    state, _, _ = training.create_state(cfg, training.build_model(cfg, platform), platform)
    return jax.tree_util.tree_leaves((state.generator["params"], state.d_spa["params"],
                                      state.d_fre["params"]))

  exact, accelerator = initial("xla", None), initial("auto", "tpu")
  assert len(exact) == len(accelerator)
  for a, b in zip(exact, accelerator):
    np.testing.assert_array_equal(a, b)
  if kernels.available():
    plugin = initial("auto", None)
    assert any(not np.array_equal(a, b) for a, b in zip(plugin, exact))
