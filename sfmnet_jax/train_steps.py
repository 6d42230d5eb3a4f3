"""The train state and the pmap-ed steps: PSNR stage, GAN stage, evaluation forward.

Every step is one `jax.pmap` over the local devices (axis "batch"): gradients
and metrics are `lax.pmean`-ed, so 1 CPU, 8 GPUs and a TPU pod run the same
code. A step whose loss or gradients are not finite changes nothing but the
`skipped_updates` counter (it is logged; the run goes on).

Inside the state each network's parameters are ONE flat float32 vector (its
`Layout` unravels it into the Flax tree the model applies): the optimiser,
EMA, finiteness check, skip and cross-device mean are then a handful of ops
on one array instead of a few thousand on ~600 small ones, which took XLA:CPU
minutes to compile. Checkpoints hold the usual trees (`to_tree`/`from_tree`).
"""

import collections
import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfmnet_jax import losses

AXIS = "batch"
PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
  """How a flat float32 parameter vector unravels into a network's parameter tree.

  `unravel` slices with static bounds, so it works on numpy arrays (no XLA
  compile on the host) and inside jit (cheap slices).
  """

  treedef: Any
  shapes: tuple

  @classmethod
  def of(cls, params):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    layout = cls(treedef, tuple(tuple(np.shape(x)) for x in leaves))
    return layout, ravel(params)

  def unravel(self, flat):
    out, start = [], 0
    for shape in self.shapes:
      size = int(np.prod(shape))
      out.append(flat[start:start + size].reshape(shape))
      start += size
    return jax.tree_util.tree_unflatten(self.treedef, out)


def ravel(params):
  """A parameter tree as one flat float32 vector (numpy in, numpy out; jax in, jax out)."""
  leaves = jax.tree_util.tree_leaves(params)
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data position (networks: {params, opt_state})."""

  step: jax.Array
  generator: Dict[str, PyTree]
  ema_params: Optional[jax.Array]
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


def adam(cfg) -> optax.GradientTransformation:
  """The release's optimiser: Adam(lr, betas (0.9, 0.99), eps 1e-8) on `learning_rate_schedule`."""
  return optax.adam(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def new_state(g_params, g_tx, *, seed: int, ema: bool, d_params=None, d_tx=None):
  """A fresh state and the layouts of its networks ({"generator", "d_spa", "d_fre"}).

  `d_params` = (spatial, frequency) discriminator params for the GAN stage.
  """
  layouts = {}

  def net(name, params, tx):
    layouts[name], flat = Layout.of(params)
    return {"params": flat, "opt_state": tx.init(flat)}

  generator = net("generator", g_params, g_tx)
  d_spa = d_fre = None
  if d_params is not None:
    d_spa, d_fre = net("d_spa", d_params[0], d_tx), net("d_fre", d_params[1], d_tx)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), generator=generator,
      ema_params=jnp.array(generator["params"]) if ema else None,
      d_spa=d_spa, d_fre=d_fre, rng=jax.random.key_data(jax.random.key(seed)),
      skipped_updates=jnp.zeros((), jnp.int32))
  return state, layouts


def to_tree(state: TrainState, layouts) -> TrainState:
  """The state with parameter trees in place of flat vectors (what checkpoints hold)."""
  def net(name, n):
    return None if n is None else dict(n, params=layouts[name].unravel(n["params"]))
  ema = None if state.ema_params is None else layouts["generator"].unravel(state.ema_params)
  return state.replace(generator=net("generator", state.generator), ema_params=ema,
                       d_spa=net("d_spa", state.d_spa), d_fre=net("d_fre", state.d_fre))


def from_tree(state: TrainState) -> TrainState:
  """Inverse of `to_tree`."""
  def net(n):
    return None if n is None else dict(n, params=ravel(n["params"]))
  ema = None if state.ema_params is None else ravel(state.ema_params)
  return state.replace(generator=net(state.generator), ema_params=ema,
                       d_spa=net(state.d_spa), d_fre=net(state.d_fre))


def value_and_flat_grad(fn: Callable, layout: Layout, has_aux: bool = False) -> Callable:
  """`jax.value_and_grad` of `fn(tree, *args)` taken at a flat vector; the gradient comes flat.

  The gradient is taken with respect to the unravelled tree and raveled by one
  concatenate. Differentiating through `unravel` instead makes XLA build the
  flat gradient as a sum of one zero-padded copy per leaf: ~500 leaves times
  the vector's length, 0.16 s of a C=16 step and seconds at C=64 on a CPU.
  """
  def wrapped(flat, *args):
    out, grads = jax.value_and_grad(fn, has_aux=has_aux)(layout.unravel(flat), *args)
    return out, ravel(grads)
  return wrapped


def _apply(net, grads, tx, ok):
  updates, opt_state = tx.update(grads, net["opt_state"], net["params"])
  new = {"params": net["params"] + updates, "opt_state": opt_state}
  return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, net)


def _finite(*values) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


def ema_decay_at(step, ema_decay: float):
  """The EMA's decay with warm-up, min(decay, (1 + t) / (10 + t)), so that the random
  initial weights do not linger in the average (0.99 ** 300 would still be 5% of them)."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))


def _finish(state: TrainState, ok, generator, ema_decay, **nets) -> TrainState:
  ema = state.ema_params
  if ema is not None:
    d = ema_decay_at(state.step, ema_decay)
    ema = jnp.where(ok, d * ema + (1.0 - d) * generator["params"], ema)
  return state.replace(step=state.step + 1, generator=generator, ema_params=ema,
                       skipped_updates=state.skipped_updates + (1 - ok.astype(jnp.int32)),
                       **nets)


def psnr_loss_and_grads(flat_params, batch, *, model, layouts, cfg):
  """((loss, terms), flat gradient) of the PSNR-stage loss on this device's batch."""
  def loss_fn(params):
    img_out, img_fre = model.apply({"params": params}, batch["lr_up"])
    return losses.reconstruction_losses(img_out, img_fre, batch["hr"], cfg.loss.freq_weight)

  return value_and_flat_grad(loss_fn, layouts["generator"], has_aux=True)(flat_params)


def psnr_step(state: TrainState, batch, *, model, layouts, tx, cfg):
  """PSNR stage: L1(out) + L1(fre) + 0.01 (amplitude + phase) L1, one Adam update."""
  (loss, terms), grads = psnr_loss_and_grads(state.generator["params"], batch, model=model,
                                             layouts=layouts, cfg=cfg)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean({"loss": loss, **terms}, AXIS)
  ok = _finite(grads, metrics["loss"])
  generator = _apply(state.generator, grads, tx, ok)
  metrics["grad_norm"] = jnp.linalg.norm(grads)
  metrics["finite"] = ok.astype(jnp.float32)
  return _finish(state, ok, generator, cfg.ema_decay), metrics


def gan_step(state: TrainState, batch, vgg_params, *, model, d_spa_model, d_fre_model, vgg_model,
             layouts, tx, d_tx, cfg):
  """GAN stage: the generator step (reconstruction + perceptual + adversarial), then D_spa, D_fre."""
  hr, lr_up = batch["hr"], batch["lr_up"]
  g, d_spa, d_fre = state.generator, state.d_spa, state.d_fre
  # Optional instance noise on the discriminators' inputs, from a per-device, per-step key
  # (no RNG at all otherwise: threefry costs XLA:CPU seconds of compile).
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

  ds_tree, df_tree = (layouts[k].unravel for k in ("d_spa", "d_fre"))

  def g_loss_fn(params):
    img_out, img_fre = model.apply({"params": params}, lr_up)
    rec, terms = losses.reconstruction_losses(img_out, img_fre, hr, cfg.loss.freq_weight)
    perc = losses.perceptual_loss(features, img_out, hr, cfg.gan.release_perceptual_detach)
    adv_spa = losses.bce_with_logits(
        d_spa_model.apply({"params": ds_tree(d_spa["params"])}, noisy(img_out, noise_keys[0])), 1.0)
    adv_fre = losses.bce_with_logits(
        d_fre_model.apply({"params": df_tree(d_fre["params"])}, noisy(img_out, noise_keys[1])), 1.0)
    w = cfg.loss
    total = rec + w.perceptual_weight * perc + w.adv_spatial_weight * adv_spa \
        + w.adv_frequency_weight * adv_fre
    terms = dict(terms, reconstruction=rec, perceptual=perc, adv_spatial=adv_spa,
                 adv_frequency=adv_fre)
    return total, (terms, img_out)

  (g_loss, (terms, img_out)), g_grads = value_and_flat_grad(
      g_loss_fn, layouts["generator"], has_aux=True)(g["params"])
  fake = jax.lax.stop_gradient(img_out)

  def d_loss_fn(d_model, weight, detach_fake, k_real, k_fake):
    def loss(params):
      def logits(x):
        return d_model.apply({"params": params}, x)
      return losses.discriminator_loss(logits, noisy(hr, k_real), noisy(fake, k_fake), weight,
                                       detach_fake)
    return loss

  ds_loss, ds_grads = value_and_flat_grad(
      d_loss_fn(d_spa_model, 1.0, False, noise_keys[2], noise_keys[3]),
      layouts["d_spa"])(d_spa["params"])
  df_loss, df_grads = value_and_flat_grad(
      d_loss_fn(d_fre_model, cfg.loss.adv_frequency_weight, cfg.gan.release_dfre_detach,
                noise_keys[4], noise_keys[5]), layouts["d_fre"])(d_fre["params"])
  g_grads, ds_grads, df_grads = jax.lax.pmean((g_grads, ds_grads, df_grads), AXIS)
  metrics = jax.lax.pmean({"loss": g_loss, "d_spatial_loss": ds_loss, "d_frequency_loss": df_loss,
                           **terms}, AXIS)
  ok = _finite(g_grads, ds_grads, df_grads, metrics["loss"], metrics["d_spatial_loss"],
               metrics["d_frequency_loss"])
  generator = _apply(g, g_grads, tx, ok)
  new_d_spa = _apply(d_spa, ds_grads, d_tx, ok)
  new_d_fre = _apply(d_fre, df_grads, d_tx, ok)
  metrics["grad_norm"] = jnp.linalg.norm(g_grads)
  metrics["finite"] = ok.astype(jnp.float32)
  return _finish(state, ok, generator, cfg.ema_decay, d_spa=new_d_spa, d_fre=new_d_fre), metrics


def _device_axis_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def shard(batch):
  """A host batch shaped (local devices, per device, ...) placed on the devices as pmap reads it."""
  sharding = _device_axis_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


def prefetch_to_devices(iterator, size: int = 2):
  """Yields `shard(batch)` of `iterator`'s batches, `size` batches ahead (transfers overlap steps)."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(shard(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def replicate(tree):
  """Copies of `tree` on every local device, laid out exactly as pmap returns its outputs.

  (flax.jax_utils.replicate's layout differs, so the second step would compile again.)
  """
  sharding = _device_axis_sharding()
  n = jax.local_device_count()
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.stack([np.asarray(x)] * n), sharding), tree)


def unreplicate(tree):
  """The first device's copy of a replicated tree, as numpy arrays."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def pmap_train_step(step_fn: Callable, **static) -> Callable:
  """`step_fn` bound to its static arguments, pmap-ed over the local devices.

  The state's buffers are donated on accelerators (XLA:CPU cannot reuse them).
  """
  donate = () if jax.default_backend() == "cpu" else (0,)
  return jax.pmap(functools.partial(step_fn, **static), axis_name=AXIS, donate_argnums=donate)


def pmap_generator(model) -> Callable:
  """(replicated params, (devices, batch, H, W, 3) lr_up) -> (img_out, img_fre)."""
  return jax.pmap(lambda params, lr_up: model.apply({"params": params}, lr_up), axis_name=AXIS)
