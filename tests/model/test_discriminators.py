"""The two discriminators against the release's golden vectors and closed forms."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import DISCRIMINATOR_GOLDEN, seeded_release_weights
from sfmnet_jax.model import discriminators as D
from sfmnet_jax.weights import release as release_weights


@pytest.mark.parametrize("key, kind", [("spa", "spatial"), ("fre", "frequency")])
def test_discriminator_golden_vectors(key, kind):
  """Both discriminators equal the release's classes on its golden vectors (1e-4).

  tests/fixtures/make_discriminator_golden.py ran the release's `network_9layers` and
  `network_9layers_fft` with seeded weights (rebuilt here from the stored names and
  shapes) on inputs chosen where the release is stable: D_fre's phase jumps by 2 pi
  where a spectrum bin crosses the negative real axis, so the script kept only inputs
  whose logits moved by less than 1e-5 under 1e-6 input noise.
  """
  with np.load(DISCRIMINATOR_GOLDEN) as d:
    names, shapes = list(d[f"{key}/names"]), [json.loads(s) for s in d[f"{key}/shapes"]]
    seed, gain = int(d["seed"]), float(d[f"{key}/gain"])
    x, want = d[f"{key}/input"].transpose(0, 2, 3, 1), d[f"{key}/output"]
  state_dict = seeded_release_weights(dict(zip(names, shapes)), seed, gain)
  module, variables = release_weights.load_release_discriminator(state_dict, kind)
  got = np.asarray(jax.jit(module.apply)(variables, x))
  assert abs(want[0] - want[1]) > 0.1  # the two images' logits differ by far more than the bar
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  with pytest.raises(release_weights.WeightFileError, match="missing .*classifier.2.bias"):
    release_weights.load_release_discriminator(
        {k: v for k, v in state_dict.items() if k != "classifier.2.bias"}, kind)


def test_max_pool_ceil_mode_matches_numpy():
  x = np.random.default_rng(2).normal(size=(1, 5, 7, 2)).astype(np.float32)
  y = np.asarray(D.max_pool_ceil(jnp.asarray(x)))
  assert y.shape == (1, 3, 4, 2)
  for i in range(3):
    for j in range(4):
      np.testing.assert_array_equal(y[0, i, j], x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max((0, 1)))


def test_discriminators_one_logit_per_image_and_use_their_input():
  x = jax.random.uniform(jax.random.key(3), (2, 128, 128, 3))
  for cls in (D.SpatialDiscriminator, D.FrequencyDiscriminator):
    variables = D.init_discriminator(cls(), 4)
    logits = jax.jit(cls().apply)(variables, x)
    assert logits.shape == (2,) and np.isfinite(logits).all()
    assert abs(float(logits[0] - logits[1])) > 0  # different images, different logits
    with pytest.raises(ValueError, match="takes"):
      cls().apply(variables, jnp.zeros((2, 128, 128, 1)))


def test_mfm_is_max_of_two_halves():
  mfm = D.MFM(4, 3, 1)
  x = jax.random.normal(jax.random.key(5), (1, 6, 6, 2))
  v = mfm.init(jax.random.key(6), x)
  conv = flax.linen.Conv(8, (3, 3), padding=((1, 1), (1, 1)))
  full = conv.apply({"params": v["params"]["filter"]}, x)
  np.testing.assert_allclose(mfm.apply(v, x), np.maximum(full[..., :4], full[..., 4:]), atol=1e-6)
