"""The train state and the pmap-ed steps: PSNR stage, GAN stage.

Every step is one `jax.pmap` over the local devices (axis "batch"): gradients
and metrics are `lax.pmean`-ed, so 1 CPU, 8 GPUs and a TPU pod run the same
code. Parameters, gradients and optimiser states are the networks' parameter
pytrees, updated by optax. A step whose loss or gradients are not finite
changes nothing but the `skipped_updates` counter (it is logged; the run goes on).
"""

import functools
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from sfmnet_jax.devices import AXIS
from sfmnet_jax.training import losses

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data position (networks: {params, opt_state})."""

  step: jax.Array
  generator: Dict[str, PyTree]
  ema_params: Optional[PyTree]
  d_spa: Optional[Dict[str, PyTree]]
  d_fre: Optional[Dict[str, PyTree]]
  rng: jax.Array  # raw PRNG key data (uint32), folded per step and device
  skipped_updates: jax.Array


def learning_rate_schedule(cfg) -> optax.Schedule:
  """Constant `cfg.learning_rate`, or a step decay by `lr_decay_factor` at `lr_decay_steps`."""
  if cfg.get("lr_decay_steps"):
    return optax.piecewise_constant_schedule(
        cfg.learning_rate, {int(s): cfg.lr_decay_factor for s in cfg.lr_decay_steps})
  return optax.constant_schedule(cfg.learning_rate)


def adam(cfg, flatten: bool = False) -> optax.GradientTransformation:
  """The release's optimiser: Adam(lr, betas (0.9, 0.99), eps 1e-8) on `learning_rate_schedule`.

  `flatten`: Adam over one concatenation of all parameters (`optax.flatten`): the same
  update in a few large ops instead of a few per parameter tensor; its moments are
  then one vector.
  """
  tx = optax.adam(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  return optax.flatten(tx) if flatten else tx


def new_state(g_params, g_tx, *, seed: int, ema: bool, d_params=None, d_tx=None) -> TrainState:
  """A fresh state; `d_params` = (spatial, frequency) discriminator params for the GAN stage."""
  def net(params, tx):
    return {"params": params, "opt_state": tx.init(params)}

  d_spa = d_fre = None
  if d_params is not None:
    d_spa, d_fre = net(d_params[0], d_tx), net(d_params[1], d_tx)
  return TrainState(
      step=jnp.zeros((), jnp.int32), generator=net(g_params, g_tx),
      ema_params=jax.tree_util.tree_map(jnp.array, g_params) if ema else None,
      d_spa=d_spa, d_fre=d_fre, rng=jax.random.key_data(jax.random.key(seed)),
      skipped_updates=jnp.zeros((), jnp.int32))


def _update(net, grads, tx):
  updates, opt_state = tx.update(grads, net["opt_state"], net["params"])
  return {"params": optax.apply_updates(net["params"], updates), "opt_state": opt_state}


def _finite(*trees) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(trees)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))


def ema_decay_at(step, ema_decay: float):
  """The EMA's decay with warm-up, min(decay, (1 + t) / (10 + t)), so that the random
  initial weights do not linger in the average (0.99 ** 300 would still be 5% of them)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))


def _commit(state: TrainState, ok, ema_decay: float, **updates) -> TrainState:
  """The next state: with `ok`, each network `name` updated by `updates[name] = (grads, tx)`
  and the EMA advanced; without, the same networks and a skipped update counted.

  One `lax.cond` on `ok` (the same on every device), so that nothing is computed for a
  skipped update, and the predicate is not repeated in a select per parameter.
  """
  def apply(state):
    nets = {name: _update(getattr(state, name), grads, tx)
            for name, (grads, tx) in updates.items()}
    ema = state.ema_params
    if ema is not None:
      d = ema_decay_at(state.step, ema_decay)
      ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema,
                                   nets["generator"]["params"])
    return state.replace(ema_params=ema, **nets)

  with jax.named_scope("optimizer"):
    new = jax.lax.cond(ok, apply, lambda state: state, state)
  return new.replace(step=state.step + 1,
                     skipped_updates=state.skipped_updates + (1 - ok.astype(jnp.int32)))


def psnr_loss_and_grads(params, batch, *, model, cfg):
  """((loss, terms), gradients) of the PSNR-stage loss on this device's batch."""
  def loss_fn(params):
    img_out, img_fre = model.apply({"params": params}, batch["lr_up"])
    with jax.named_scope("loss"):
      return losses.reconstruction_losses(img_out, img_fre, batch["hr"], cfg.loss.freq_weight)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def psnr_step(state: TrainState, batch, *, model, tx, cfg):
  """PSNR stage: L1(out) + L1(fre) + 0.01 (amplitude + phase) L1, one Adam update."""
  (loss, terms), grads = psnr_loss_and_grads(state.generator["params"], batch, model=model,
                                             cfg=cfg)
  with jax.named_scope("allreduce"):
    grads = jax.lax.pmean(grads, AXIS)
    metrics = jax.lax.pmean({"loss": loss, **terms}, AXIS)
  ok = _finite(grads, metrics["loss"])
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["finite"] = ok.astype(jnp.float32)
  return _commit(state, ok, cfg.ema_decay, generator=(grads, tx)), metrics


def gan_step(state: TrainState, batch, vgg_params, *, model, d_spa_model, d_fre_model, vgg_model,
             tx, d_tx, cfg):
  """GAN stage: the generator step (reconstruction + perceptual + adversarial), then D_spa, D_fre."""
  hr, lr_up = batch["hr"], batch["lr_up"]
  g, d_spa, d_fre = state.generator, state.d_spa, state.d_fre
  # Optional instance noise on the discriminators' inputs, from a per-device, per-step key.
  noise_keys = [None] * 6
  if cfg.gan.instance_noise > 0:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step),
                             jax.lax.axis_index(AXIS))
    noise_keys = list(jax.random.split(key, 6))

  def noisy(x, k):
    if k is None:
      return x
    return x + cfg.gan.instance_noise * jax.random.normal(k, x.shape, x.dtype)

  def features(x):
    return vgg_model.apply({"params": vgg_params}, x)

  def g_loss_fn(params):
    img_out, img_fre = model.apply({"params": params}, lr_up)
    with jax.named_scope("loss"):
      return g_losses(img_out, img_fre)

  def g_losses(img_out, img_fre):
    rec, terms = losses.reconstruction_losses(img_out, img_fre, hr, cfg.loss.freq_weight)
    perc = losses.perceptual_loss(features, img_out, hr, cfg.gan.release_perceptual_detach)
    adv_spa = losses.bce_with_logits(
        d_spa_model.apply({"params": d_spa["params"]}, noisy(img_out, noise_keys[0])), 1.0)
    adv_fre = losses.bce_with_logits(
        d_fre_model.apply({"params": d_fre["params"]}, noisy(img_out, noise_keys[1])), 1.0)
    w = cfg.loss
    total = rec + w.perceptual_weight * perc + w.adv_spatial_weight * adv_spa \
        + w.adv_frequency_weight * adv_fre
    terms = dict(terms, reconstruction=rec, perceptual=perc, adv_spatial=adv_spa,
                 adv_frequency=adv_fre)
    return total, (terms, img_out)

  (g_loss, (terms, img_out)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g["params"])
  fake = jax.lax.stop_gradient(img_out)

  def d_loss_fn(d_model, weight, detach_fake, k_real, k_fake):
    def loss(params):
      def logits(x):
        return d_model.apply({"params": params}, x)
      with jax.named_scope("loss"):
        return losses.discriminator_loss(logits, noisy(hr, k_real), noisy(fake, k_fake), weight,
                                         detach_fake)
    return loss

  ds_loss, ds_grads = jax.value_and_grad(
      d_loss_fn(d_spa_model, 1.0, False, noise_keys[2], noise_keys[3]))(d_spa["params"])
  df_loss, df_grads = jax.value_and_grad(
      d_loss_fn(d_fre_model, cfg.loss.adv_frequency_weight, cfg.gan.release_dfre_detach,
                noise_keys[4], noise_keys[5]))(d_fre["params"])
  with jax.named_scope("allreduce"):
    g_grads, ds_grads, df_grads = jax.lax.pmean((g_grads, ds_grads, df_grads), AXIS)
    metrics = jax.lax.pmean({"loss": g_loss, "d_spatial_loss": ds_loss,
                             "d_frequency_loss": df_loss, **terms}, AXIS)
  ok = _finite(g_grads, ds_grads, df_grads, metrics["loss"], metrics["d_spatial_loss"],
               metrics["d_frequency_loss"])
  metrics["grad_norm"] = optax.tree.norm(g_grads)
  metrics["finite"] = ok.astype(jnp.float32)
  return _commit(state, ok, cfg.ema_decay, generator=(g_grads, tx), d_spa=(ds_grads, d_tx),
                 d_fre=(df_grads, d_tx)), metrics


def pmap_train_step(step_fn: Callable, **static) -> Callable:
  """`step_fn` bound to its static arguments, pmap-ed over the local devices.

  The state's buffers are donated on accelerators (XLA:CPU cannot reuse them).
  """
  donate = () if jax.default_backend() == "cpu" else (0,)
  return jax.pmap(functools.partial(step_fn, **static), axis_name=AXIS, donate_argnums=donate)
