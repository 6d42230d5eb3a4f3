"""The C++ kernel gradients (sfmnet_jax/csrc) against float64 sums, XLA's gradients and bad set-ups."""

import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfmnet_jax import SFMNet, cpu_kernels, layers
from sfmnet_jax.layers import abstract_variables, host_init

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason="the C++ kernels could not be built here (see the warning)")


def _taps(x, g, depthwise):
  """float64 sum over n, h, w of pad(x)[n, h+i, w+j, c] * g[n, h, w, d] (or d == c)."""
  h, w = x.shape[1:3]
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  g = np.asarray(g, np.float64)
  spec = "nhwc,nhwc->c" if depthwise else "nhwc,nhwd->cd"
  return np.stack([np.stack([np.einsum(spec, xp[:, i:i + h, j:j + w], g) for j in range(3)])
                   for i in range(3)])


# (N, H, W, Ci, Co): register-tile tails in both directions, fewer than 8 outputs
# (a conv to RGB), 3 inputs (a conv from RGB), rows longer than a pixel block, 1x1 images.
SHAPES = [(2, 9, 11, 5, 19), (1, 7, 6, 16, 3), (3, 5, 70, 3, 16), (2, 4, 4, 24, 8),
          (1, 1, 1, 2, 2), (2, 8, 8, 13, 17), (1, 3, 40, 32, 48)]


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_kernel_grad_equals_float64_sum(shape):
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape))
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  g = rng.standard_normal((n, h, w, co)).astype(np.float32)
  got = jax.jit(cpu_kernels.conv3x3_kernel_grad)(x, g)
  assert "sfmnet_conv3x3_kernel_grad" in jax.jit(cpu_kernels.conv3x3_kernel_grad).lower(
      x, g).as_text()
  want = _taps(x, g, depthwise=False)
  assert got.shape == (3, 3, ci, co)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_depthwise_kernel_grad_equals_float64_sum(shape):
  n, h, w, c, _ = shape
  rng = np.random.default_rng(sum(shape) + 1)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  g = rng.standard_normal((n, h, w, c)).astype(np.float32)
  fn = jax.jit(lambda x, g: cpu_kernels.depthwise3x3_kernel_grad(
      x, g, layers._depthwise_kernel_grad))  # pylint: disable=protected-access
  want = _taps(x, g, depthwise=True)
  np.testing.assert_allclose(fn(x, g), want, rtol=0, atol=2e-6 * np.abs(want).max())
  # XLA's path (used where the kernels are not) gives the same numbers.
  np.testing.assert_allclose(layers._depthwise_kernel_grad(x, g), want,  # pylint: disable=protected-access
                             rtol=0, atol=2e-5 * np.abs(want).max())


def test_kernel_grads_are_reproducible_bit_for_bit():
  """Fixed row chunks summed in order: no dependence on which thread ran which rows."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 64, 64, 16)).astype(np.float32)
  g = rng.standard_normal((4, 64, 64, 16)).astype(np.float32)
  fn = jax.jit(cpu_kernels.conv3x3_kernel_grad)
  first = np.asarray(fn(x, g))
  for _ in range(5):
    np.testing.assert_array_equal(fn(x, g), first)


def test_conv_layer_gradients_under_pmap_equal_xla():
  """The kernel runs inside pmap on each device and gives XLA's gradients."""
  n = jax.local_device_count()
  rng = np.random.default_rng(4)
  x = rng.standard_normal((n, 2, 12, 10, 8)).astype(np.float32)
  k = (0.2 * rng.standard_normal((3, 3, 8, 16))).astype(np.float32)

  def grads(conv):
    def fn(x, k):
      loss = lambda x, k: jnp.sum(jnp.tanh(conv(jax.nn.relu(x + 0.1), k)) ** 2)
      return jax.grad(loss, argnums=(0, 1))(x, k)
    return fn

  assert "sfmnet_conv3x3_kernel_grad" in jax.jit(grads(layers.conv3x3)).lower(x[0], k).as_text()
  got = jax.pmap(grads(layers.conv3x3), in_axes=(0, None))(x, k)
  # XLA's autodiff of the plain convolution.
  want = jax.pmap(grads(layers.conv_same), in_axes=(0, None))(x, k)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


def sfmnet_gradients(path=None):
  """Every parameter gradient of a small SFMNet (C=8, 16x16) and the HLO; saved to `path`."""
  model = SFMNet(num_features=8)
  params = jax.tree.map(jnp.asarray, host_init(abstract_variables(model, (16, 16))["params"], 0))
  rng = np.random.default_rng(5)
  x = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  hr = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)

  def loss(params, x):
    out, fre = model.apply({"params": params}, x)
    return jnp.mean(jnp.abs(out - hr)) + jnp.mean(jnp.abs(fre - hr))

  grad = jax.jit(jax.grad(loss))
  grads = {"/".join(p): np.asarray(v)
           for p, v in flax.traverse_util.flatten_dict(grad(params, x)).items()}
  hlo = grad.lower(params, x).compile().as_text()
  if path:
    np.savez(path, hlo=np.array(hlo), **{"g:" + k: v for k, v in grads.items()})
  return grads, hlo


def test_sfmnet_gradients_equal_xla_gradients(tmp_path):
  """Every parameter's gradient of a small SFMNet matches XLA's own (SFMNET_CPU_KERNELS=0).

  The kernels compute leaves of the backward pass (kernel gradients feed nothing
  else), so the forward and every input gradient are XLA's in both runs and the
  phase's instability cannot amplify their rounding: here 1e-6 noise on the input
  moves some gradients by 2e-3 of their scale, the two paths differ by < 5e-7.
  """
  got, hlo = sfmnet_gradients()
  assert '"sfmnet_conv3x3_kernel_grad"' in hlo and '"sfmnet_depthwise3x3_kernel_grad"' in hlo
  out = tmp_path / "xla.npz"
  tests = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, SFMNET_CPU_KERNELS="0",
             PYTHONPATH=os.pathsep.join([os.path.dirname(tests), tests]))
  code = f"import test_cpu_kernels as t; t.sfmnet_gradients({str(out)!r})"
  done = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(tests),
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  ref = np.load(out)
  assert "_kernel_grad\"" not in str(ref["hlo"])  # the switch turned the kernels off
  assert any(k.endswith("kernel") and v.shape[:2] == (3, 3) for k, v in got.items())
  assert set(got) == {k[2:] for k in ref.files if k.startswith("g:")}
  for name, g in got.items():
    want = ref["g:" + name]
    scale = float(np.abs(want).max()) + 1e-12
    np.testing.assert_allclose(g, want, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(cpu_kernels.KernelUnavailable, match="no C.. compiler"):
    cpu_kernels.build(str(tmp_path / "k.so"))
  assert not (tmp_path / "k.so").exists()


def test_failed_build_names_the_command_and_leaves_no_file(tmp_path, monkeypatch):
  fake = tmp_path / "fakecxx"
  fake.write_text("#!/bin/sh\necho 'fakecxx: error: out of luck' >&2\nexit 1\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CXX", str(fake))
  with pytest.raises(cpu_kernels.KernelUnavailable, match="out of luck"):
    cpu_kernels.build(str(tmp_path / "k.so"))
  assert os.listdir(tmp_path) == ["fakecxx"]


def test_unavailable_kernels_fall_back_to_xla_with_a_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  assert not cpu_kernels.available(str(tmp_path / "empty_cache"))  # nothing built there
  assert "no C++ compiler" in caplog.text and "XLA" in caplog.text
  monkeypatch.setenv("SFMNET_CPU_KERNELS", "0")
  assert not cpu_kernels.enabled()


def test_benchmark_counts_the_kernels_flops():
  """XLA's cost analysis counts no custom call; `custom_call_flops` adds 2 N H W per weight."""
  x = np.zeros((2, 6, 5, 4), np.float32)
  g = np.zeros((2, 6, 5, 8), np.float32)

  def both(x, g):
    dw = layers._depthwise_kernel_grad  # pylint: disable=protected-access
    return cpu_kernels.conv3x3_kernel_grad(x, g), cpu_kernels.depthwise3x3_kernel_grad(x, x, dw)

  want = 2 * 60 * (9 * 4 * 8) + 2 * 60 * (9 * 4)
  lowered = jax.jit(both).lower(x, g)
  assert cpu_kernels.custom_call_flops(lowered.as_text("hlo")) == want
  assert cpu_kernels.custom_call_flops(lowered.compile().as_text()) == want
