"""SFMNet's training losses (reference: "Losses"), on NHWC images in [0, 1].

PSNR stage: L1(img_out, HR) + L1(img_fre, HR) + 0.01 * (L1 of amplitudes +
L1 of phases of rfft2(img_fre) vs rfft2(HR)). GAN stage adds the perceptual
loss (VGG features, L1) and the vanilla-GAN (logit BCE) adversarial terms.
The release's two gradient quirks are available as flags: `detach_sr_features`
(its perceptual loss has no gradient) and the fake-side detach of D_fre (in
`train_steps`).
"""

import jax
import jax.numpy as jnp
import optax

from sfmnet_jax.model import spectral


def l1(a, b):
  return jnp.mean(jnp.abs(a - b))


def frequency_loss(img_fre, hr):
  """(amplitude L1, phase L1) between rfft2 of the frequency branch's output and of HR."""
  amp_a, pha_a = spectral.amplitude_phase(img_fre)
  amp_b, pha_b = spectral.amplitude_phase(hr)
  return l1(amp_a, amp_b), l1(pha_a, pha_b)


def reconstruction_losses(img_out, img_fre, hr, freq_weight: float = 0.01):
  """The PSNR-stage loss terms and their weighted total."""
  pix_out, pix_fre = l1(img_out, hr), l1(img_fre, hr)
  amp, pha = frequency_loss(img_fre, hr)
  total = pix_out + pix_fre + freq_weight * (amp + pha)
  return total, {"l1_out": pix_out, "l1_fre": pix_fre, "amplitude": amp, "phase": pha}


def perceptual_loss(features_fn, sr, hr, detach_sr_features: bool = False):
  """L1 between VGG features of SR and HR (HR features carry no gradient)."""
  f_sr = features_fn(sr)
  if detach_sr_features:  # the release's quirk: no gradient reaches the generator
    f_sr = jax.lax.stop_gradient(f_sr)
  return l1(f_sr, jax.lax.stop_gradient(features_fn(hr)))


def bce_with_logits(logits, target: float):
  """Mean binary cross-entropy of logits against a constant label (PyTorch's BCEWithLogitsLoss)."""
  labels = jnp.full_like(logits, target)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def discriminator_loss(logits_fn, hr, fake, weight: float = 1.0, detach_fake_logits: bool = False):
  """weight * (BCE(D(HR), 1) + BCE(D(fake), 0)); `fake` carries no gradient to the generator.

  `detach_fake_logits` reproduces the release's D_fre quirk: the fake term then
  gives the discriminator no gradient either (it never learns from fakes).
  """
  real_logits = logits_fn(hr)
  fake_logits = logits_fn(jax.lax.stop_gradient(fake))
  if detach_fake_logits:
    fake_logits = jax.lax.stop_gradient(fake_logits)
  return weight * (bce_with_logits(real_logits, 1.0) + bce_with_logits(fake_logits, 0.0))
