"""The C++ kernels (sfmnet_jax/cpu/csrc) against float64 sums, XLA's gradients and bad set-ups."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfmnet_jax.cpu import kernels as cpu_kernels
from sfmnet_jax import host
from sfmnet_jax.cpu import ops, process

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


# Winograd's shapes (channels multiples of 8): H and W that leave partial 2x2 and 4x4
# tiles (9, 11, 7, 6, 5, 3, 1, 70), rows of more than one block of tiles (W = 40, 70),
# a 1x1 image, 16 -> 8 and 8 -> 24.
WINOGRAD_SHAPES = [(2, 9, 11, 8, 16), (1, 7, 6, 16, 8), (3, 5, 70, 24, 16), (2, 4, 4, 8, 24),
                   (1, 1, 1, 8, 8), (1, 3, 40, 32, 48), (1, 12, 52, 16, 16)]
WINOGRAD = ("winograd", "winograd4")
FORWARD_TARGET = {"direct": "sfmnet_conv3x3", "winograd": "sfmnet_conv3x3_winograd",
                  "winograd4": "sfmnet_conv3x3_winograd4"}


def _conv(x, k, depthwise):
  """float64 sum over i, j (and c) of pad(x)[n, h+i, w+j, c] * k[i, j, c(, d)]."""
  h, w = x.shape[1:3]
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = np.asarray(k, np.float64)
  spec = "nhwc,c->nhwc" if depthwise else "nhwc,cd->nhwd"
  return sum(np.einsum(spec, xp[:, i:i + h, j:j + w], k[i, j]) for i in range(3) for j in range(3))


def _lowers_to(fn, target, *args):
  return f'custom_call_target="{target}"' in jax.jit(fn).lower(*args).as_text("hlo")


@pytest.mark.parametrize("algorithm,shape", [("direct", s) for s in SHAPES] +
                         [(a, s) for a in WINOGRAD for s in WINOGRAD_SHAPES])
def test_dense_conv_equals_float64_sum(algorithm, shape):
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape) + 2)
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  k = rng.standard_normal((3, 3, ci, co)).astype(np.float32)
  fn = lambda x, k: cpu_kernels.conv3x3(x, k, algorithm)  # noqa: E731
  assert _lowers_to(fn, FORWARD_TARGET[algorithm], x, k)
  want = _conv(x, k, depthwise=False)
  got = jax.jit(fn)(x, k)
  assert got.shape == (n, h, w, co)
  # F(4x4, 3x3) transforms with coefficients up to 8 (A) and 5 (B): ~10x the rounding.
  tol = 2e-5 if algorithm == "winograd4" else 2e-6
  np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_auto_algorithm_and_bad_requests():
  x = np.zeros((1, 4, 4, 8), np.float32)
  # F(2x2, 3x3) below 32 x 32 images, F(4x4, 3x3) from there; direct for other channels.
  assert _lowers_to(cpu_kernels.conv3x3, "sfmnet_conv3x3_winograd", x, np.zeros((3, 3, 8, 16)))
  for shape in ((1, 32, 32, 8), (2, 40, 33, 8)):
    assert _lowers_to(cpu_kernels.conv3x3, "sfmnet_conv3x3_winograd4", np.zeros(shape, np.float32),
                      np.zeros((3, 3, 8, 16)))
  assert not _lowers_to(cpu_kernels.conv3x3, "sfmnet_conv3x3_winograd4",
                        np.zeros((1, 31, 64, 8), np.float32), np.zeros((3, 3, 8, 16)))
  assert _lowers_to(cpu_kernels.conv3x3, "sfmnet_conv3x3", x, np.zeros((3, 3, 8, 3)))
  # A layer gets the algorithm asked for where channel counts allow it.
  assert cpu_kernels.layer_algorithm(8, 16, "winograd4") == "winograd4"
  assert cpu_kernels.layer_algorithm(3, 16, "winograd4") == "direct"
  assert cpu_kernels.layer_algorithm(3, 16, "auto") == "auto"
  assert cpu_kernels.layer_algorithm(8, 16, "direct") == "direct"
  # Kernel gradients use Winograd from 32 channels in and out.
  assert _lowers_to(cpu_kernels.conv3x3_kernel_grad, "sfmnet_conv3x3_kernel_grad", x,
                    np.zeros((1, 4, 4, 16), np.float32))
  x32 = np.zeros((1, 4, 4, 32), np.float32)
  assert _lowers_to(cpu_kernels.conv3x3_kernel_grad, "sfmnet_conv3x3_kernel_grad_winograd",
                    x32, x32)
  for algorithm in WINOGRAD:
    with pytest.raises(ValueError, match="multiples of 8"):
      cpu_kernels.conv3x3(x, np.zeros((3, 3, 8, 3), np.float32), algorithm)
    with pytest.raises(ValueError, match="multiples of 8"):
      cpu_kernels.conv3x3_kernel_grad(x, np.zeros((1, 4, 4, 12), np.float32), algorithm)
  with pytest.raises(ValueError, match="unknown conv algorithm"):
    cpu_kernels.conv3x3(x, np.zeros((3, 3, 8, 8), np.float32), "fft")
  with pytest.raises(ValueError, match="unknown conv algorithm"):
    cpu_kernels.layer_algorithm(8, 8, "fft")


@pytest.mark.parametrize("target", ["sfmnet_conv3x3_winograd", "sfmnet_conv3x3_winograd4",
                                    "sfmnet_conv3x3_kernel_grad_winograd",
                                    "sfmnet_conv3x3_kernel_grad_winograd4"])
def test_winograd_handlers_reject_channels_not_multiples_of_8(target):
  """Called directly (past `conv3x3`'s own check), each handler names itself."""
  x = np.zeros((1, 4, 4, 12), np.float32)
  second, out = ((np.zeros((1, 4, 4, 8), np.float32), (3, 3, 12, 8)) if "grad" in target
                 else (np.zeros((3, 3, 12, 8), np.float32), (1, 4, 4, 8)))
  with pytest.raises(Exception, match=f"{target}: .*multiples of 8"):
    jax.block_until_ready(jax.jit(lambda a, b: cpu_kernels._call(  # pylint: disable=protected-access
        target, out, None, a, b))(x, second))


@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_conv_and_gradients_equal_float64(shape):
  """The 1x1 conv layer: forward x k, input gradient g k^T, kernel gradient x^T g."""
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape) + 4)
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  k = rng.standard_normal((ci, co)).astype(np.float32)
  g = rng.standard_normal((n, h, w, co)).astype(np.float32)
  y, vjp = jax.vjp(ops.conv1x1, x, k)
  dx, dk = vjp(g)
  x64, k64, g64 = (np.asarray(a, np.float64) for a in (x, k, g))
  for got, want in ((y, np.einsum("nhwc,cd->nhwd", x64, k64)),
                    (dx, np.einsum("nhwd,cd->nhwc", g64, k64)),
                    (dk, np.einsum("nhwc,nhwd->cd", x64, g64))):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
  grads = lambda x, k, g: jax.vjp(ops.conv1x1, x, k)[1](g)  # noqa: E731
  assert _lowers_to(grads, "sfmnet_conv1x1", x, k, g)
  assert _lowers_to(grads, "sfmnet_conv1x1_kernel_grad", x, k, g)


@pytest.mark.parametrize("shape", SHAPES)
def test_per_image_products_and_gradients_equal_float64(shape):
  """The channel attention's products: `conv1x1` with a kernel per image (attn v) and
  `gram` (q^T k per image), each with both gradients."""
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape) + 7)
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  y = rng.standard_normal((n, h, w, co)).astype(np.float32)
  k = rng.standard_normal((n, ci, co)).astype(np.float32)
  gk = rng.standard_normal((n, ci, co)).astype(np.float32)
  x64, y64, k64, gk64 = (np.asarray(a, np.float64) for a in (x, y, k, gk))
  out, vjp = jax.vjp(ops.conv1x1, x, k)
  dx, dk = vjp(y)
  gr, gram_vjp = jax.vjp(ops.gram, x, y)
  gx, gy = gram_vjp(gk)
  for got, want in ((out, np.einsum("nhwc,ncd->nhwd", x64, k64)),
                    (dx, np.einsum("nhwd,ncd->nhwc", y64, k64)),
                    (dk, np.einsum("nhwc,nhwd->ncd", x64, y64)),
                    (gr, np.einsum("nhwc,nhwd->ncd", x64, y64)),
                    (gx, np.einsum("nhwd,ncd->nhwc", y64, gk64)),
                    (gy, np.einsum("nhwc,ncd->nhwd", x64, gk64))):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max() + 1e-30)
  assert _lowers_to(ops.gram, "sfmnet_conv1x1_kernel_grad", x, y)
  assert _lowers_to(ops.conv1x1, "sfmnet_conv1x1", x, k)
  with pytest.raises(Exception, match="sfmnet_conv1x1"):  # the handler checks its operands
    jax.block_until_ready(jax.jit(lambda x, k: cpu_kernels._call(  # pylint: disable=protected-access
        "sfmnet_conv1x1", (n, h, w, co), None, x, k))(x, k[:1].repeat(n + 1, 0)))


@pytest.mark.parametrize("shape", SHAPES + [(8, 32, 17, 64, 64)])
def test_bias_gradient_is_the_float64_channel_sum(shape):
  """`ops.add_bias`: y + b forward; its gradient passes g through and sums it per channel
  (`cpu_kernels.channel_sum`: all 8-, 32-lane and scalar channel blocks, one-pixel images)."""
  n, h, w, _, c = shape
  rng = np.random.default_rng(sum(shape) + 6)
  y = rng.standard_normal((n, h, w, c)).astype(np.float32)
  b = rng.standard_normal(c).astype(np.float32)
  g = rng.standard_normal((n, h, w, c)).astype(np.float32)
  out, vjp = jax.vjp(ops.add_bias, y, b)
  dy, db = vjp(g)
  np.testing.assert_array_equal(out, y + b)
  np.testing.assert_array_equal(dy, g)
  want = np.asarray(g, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(db, want, rtol=0, atol=2e-6 * np.abs(g).sum((0, 1, 2)).max())
  assert _lowers_to(lambda y, b, g: jax.vjp(ops.add_bias, y, b)[1](g), "sfmnet_channel_sum",
                    y, b, g)
  # Other ranks sum over all axes but the last, through XLA.
  np.testing.assert_allclose(cpu_kernels.channel_sum(g[0]), g[0].astype(np.float64).sum((0, 1)),
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_depthwise_conv_equals_float64_sum(shape):
  n, h, w, c, _ = shape
  rng = np.random.default_rng(sum(shape) + 3)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  k = rng.standard_normal((3, 3, c)).astype(np.float32)
  assert _lowers_to(ops.depthwise3x3, "sfmnet_depthwise3x3", x, k)
  want = _conv(x, k, depthwise=True)
  np.testing.assert_allclose(jax.jit(ops.depthwise3x3)(x, k), want, rtol=0,
                             atol=2e-6 * np.abs(want).max())
  # XLA's path (used where the kernels are not) gives the same numbers.
  np.testing.assert_allclose(ops._grouped_conv(x, k), want, rtol=0,  # pylint: disable=protected-access
                             atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("algorithm,shape", [("direct", s) for s in SHAPES] +
                         [(a, s) for a in WINOGRAD for s in WINOGRAD_SHAPES])
def test_dense_kernel_grad_equals_float64_sum(algorithm, shape):
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape))
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  g = rng.standard_normal((n, h, w, co)).astype(np.float32)
  fn = lambda x, g: cpu_kernels.conv3x3_kernel_grad(x, g, algorithm)  # noqa: E731
  target = FORWARD_TARGET[algorithm].replace("conv3x3", "conv3x3_kernel_grad")
  assert _lowers_to(fn, target, x, g)
  got = jax.jit(fn)(x, g)
  want = _taps(x, g, depthwise=False)
  assert got.shape == (3, 3, ci, co)
  # Winograd sums transformed values up to 4x (F(2x2, 3x3)) and 100x (F(4x4, 3x3))
  # larger than x * g.
  tol = {"winograd": 4e-6, "winograd4": 3e-5}.get(algorithm, 2e-6)
  np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_depthwise_kernel_grad_equals_float64_sum(shape):
  n, h, w, c, _ = shape
  rng = np.random.default_rng(sum(shape) + 1)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  g = rng.standard_normal((n, h, w, c)).astype(np.float32)
  fn = jax.jit(lambda x, g: cpu_kernels.depthwise3x3_kernel_grad(
      x, g, ops._grouped_conv_kernel_grad))  # pylint: disable=protected-access
  want = _taps(x, g, depthwise=True)
  np.testing.assert_allclose(fn(x, g), want, rtol=0, atol=2e-6 * np.abs(want).max())
  # XLA's path (used where the kernels are not) gives the same numbers.
  np.testing.assert_allclose(ops._grouped_conv_kernel_grad(x, g), want,  # pylint: disable=protected-access
                             rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("algorithm", ["direct", "winograd", "winograd4"])
def test_kernel_grads_are_reproducible_bit_for_bit(algorithm):
  """Fixed row chunks summed in order: no dependence on which thread ran which rows."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((4, 64, 64, 16)).astype(np.float32)
  g = rng.standard_normal((4, 64, 64, 16)).astype(np.float32)
  fn = jax.jit(lambda x, g: cpu_kernels.conv3x3_kernel_grad(x, g, algorithm))
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

  assert "sfmnet_conv3x3_kernel_grad" in jax.jit(grads(ops.conv3x3)).lower(x[0], k).as_text()
  got = jax.pmap(grads(ops.conv3x3), in_axes=(0, None))(x, k)
  # XLA's autodiff of the plain convolution.
  want = jax.pmap(grads(cpu_kernels.xla_conv_same), in_axes=(0, None))(x, k)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


def _in_subprocess(call, out, **env):
  """Runs `t.<call>` (this module imported as t) in a fresh Python with `env` added to
  the environment, and loads the .npz it wrote to `out`."""
  here = os.path.dirname(os.path.abspath(__file__))
  repo = os.path.dirname(os.path.dirname(here))
  env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([repo, here]))
  code = f"import test_kernels as t; t.{call}"
  done = subprocess.run([sys.executable, "-c", code], env=env, cwd=repo,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return np.load(out)


def kernel_outputs(path=None):
  """Every kernel on fixed inputs whose widths take 16-lane and 8-lane vectors and
  register-tile tails (saved to `path` with the library's path)."""
  rng = np.random.default_rng(11)
  x = rng.standard_normal((2, 9, 37, 24)).astype(np.float32)
  g = rng.standard_normal((2, 9, 37, 40)).astype(np.float32)
  k = rng.standard_normal((3, 3, 24, 40)).astype(np.float32)
  out = {"dw_k": rng.standard_normal((3, 3, 24)).astype(np.float32)}
  for algorithm in ("direct", "winograd", "winograd4"):
    out[f"conv_{algorithm}"] = cpu_kernels.conv3x3(x, k, algorithm)
    out[f"kgrad_{algorithm}"] = cpu_kernels.conv3x3_kernel_grad(x, g, algorithm)
  out["conv_rgb"] = cpu_kernels.conv3x3(x, k[..., :3], "direct")
  out["kgrad_rgb"] = cpu_kernels.conv3x3_kernel_grad(x, g[..., :3], "direct")
  out["conv1x1"] = cpu_kernels.conv1x1(x, k[0, 0])
  out["conv1x1_kgrad"] = cpu_kernels.conv1x1_kernel_grad(x, g)
  out["depthwise"], vjp = jax.vjp(ops.depthwise3x3, x, out["dw_k"])
  out["depthwise_dx"], out["depthwise_dk"] = vjp(g[..., :24])
  out = {name: np.asarray(v) for name, v in out.items()}
  if path:
    np.savez(path, library=np.array(cpu_kernels.library_path()), **out)
  return out


@pytest.mark.skipif("avx512f" not in host.cpu_vector_extensions().split(),
                    reason="no AVX-512 here: both builds are the same AVX2 code")
def test_avx512_and_avx2_builds_give_the_same_bits(tmp_path):
  """The 16-lane kernels (8 x 32 and 16 x 16 register tiles) sum the same products in
  the same order as the 8-lane ones (6 x 16): equal to the bit. The AVX2 build is made
  and run in a subprocess ($SFMNET_CPU_KERNELS_FLAGS=-mno-avx512f)."""
  out = tmp_path / "avx2.npz"
  avx2 = _in_subprocess(f"kernel_outputs({str(out)!r})", out,
                        SFMNET_CPU_KERNELS_FLAGS="-mno-avx512f")
  assert str(avx2["library"]) != cpu_kernels.library_path()  # another build, not this one
  got = kernel_outputs()
  assert set(got) == set(avx2.files) - {"library"}
  for name, value in got.items():
    np.testing.assert_array_equal(value, avx2[name], err_msg=name)


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
