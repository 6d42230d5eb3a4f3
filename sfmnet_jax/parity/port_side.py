"""The port's side of a twin (`twin.py`): this package's train step from the release's
weights, its networks and outputs, and its gradients at other weights; and the conversion of
the release side's state_dicts to the port's flat parameters."""

import functools
import time
from typing import Dict

import numpy as np


def flat(tree) -> Dict[str, np.ndarray]:
  """A parameter tree as {"a/b/c": array}."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def part(weights: Dict[str, np.ndarray], name: str) -> Dict[str, np.ndarray]:
  """The entries of one network ("generator/...") of a flat dict, without its prefix."""
  return {k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(name + "/")}


def release_networks(weights: Dict[str, np.ndarray], cfg) -> Dict[str, Dict[str, np.ndarray]]:
  """The release side's state_dicts ("generator/...", "d_spa/...", "d_fre/...") as the port's
  flat parameters, by network."""
  from sfmnet_jax.model.generator import SFMNet  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights import release  # pylint: disable=g-import-not-at-top
  plain = SFMNet(num_features=cfg.model.num_features, num_resblocks=cfg.model.num_resblocks)
  out = {"generator": flat(release.state_dict_to_params(part(weights, "generator"), plain))}
  if cfg.stage == "gan":
    for name, kind in (("d_spa", "spatial"), ("d_fre", "frequency")):
      out[name] = flat(release.load_release_discriminator(part(weights, name), kind)[1]["params"])
  return out


def port_initial_generator(cfg) -> Dict[str, np.ndarray]:
  """The port's own initial generator for the config's seed (`model.init_variables`:
  PyTorch's default distributions, JAX's random draw) as a state_dict the release loads."""
  from sfmnet_jax.model.generator import SFMNet, init_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights import release  # pylint: disable=g-import-not-at-top
  plain = SFMNet(num_features=cfg.model.num_features, num_resblocks=cfg.model.num_resblocks)
  return release.release_loadable(
      release.params_to_state_dict(init_generator(plain, cfg.seed)["params"]))


class PortSide:
  """This package's train step (`steps.pmap_train_step`, as `train.py` runs it) from the
  release's initial weights."""

  def __init__(self, cfg, initial: Dict[str, Dict[str, np.ndarray]]):
    import jax  # pylint: disable=g-import-not-at-top
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    from sfmnet_jax import devices  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
    self.jax, self.devices, self.cfg = jax, devices, cfg
    tree = lambda flat: traverse_util.unflatten_dict(  # noqa: E731
        {tuple(k.split("/")): v for k, v in flat.items()})
    model = training.build_model(cfg)
    _, static, self.vgg_params = training.create_state(cfg, model)
    d_params = (tree(initial["d_spa"]), tree(initial["d_fre"])) if cfg.stage == "gan" else None
    state = steps.new_state(tree(initial["generator"]), static["tx"], seed=cfg.seed, ema=False,
                            d_params=d_params, d_tx=static.get("d_tx"))
    self.state = devices.replicate(state)
    if self.vgg_params is not None:
      self.vgg_params = devices.replicate(self.vgg_params)
    step_fn = steps.gan_step if cfg.stage == "gan" else steps.psnr_step
    self.step_fn = steps.pmap_train_step(step_fn, **static)
    self.model = static["model"]
    self._gradients = None

  def step(self, batch) -> dict:
    t0 = time.perf_counter()
    data = {"hr": batch["hr"], "lr_up": batch["lr_up"]}
    args = (self.state, data) + ((self.vgg_params,) if self.cfg.stage == "gan" else ())
    self.state, metrics = self.step_fn(*args)
    metrics = {k: float(np.asarray(v)[0]) for k, v in self.jax.device_get(metrics).items()}
    seconds = time.perf_counter() - t0
    total, finite = metrics.pop("loss"), bool(metrics.pop("finite"))
    metrics.pop("grad_norm", None)
    return {"total": total, "terms": metrics, "seconds": seconds, "finite": finite}

  def gradients_at(self, generator: Dict[str, np.ndarray], batch) -> Dict[str, np.ndarray]:
    """The PSNR-stage loss's gradients, by release name (PyTorch layout), of this side's model
    (the config's numerical mode) at other `generator` weights (flat, the port's names) on
    `batch` ({lr_up, hr} NHWC): compared with the release's at the same weights, what the two
    codes compute differently, apart from where their trajectories went."""
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.weights.release import params_to_state_dict  # pylint: disable=g-import-not-at-top
    if self._gradients is None:
      self._gradients = self.jax.jit(functools.partial(steps.psnr_loss_and_grads,
                                                       model=self.model, cfg=self.cfg))
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in generator.items()})
    _, grads = self._gradients(params, {"lr_up": batch["lr_up"], "hr": batch["hr"]})
    return params_to_state_dict(grads)

  def networks(self) -> Dict[str, Dict[str, np.ndarray]]:
    """The current parameters by network, flat."""
    names = ("generator", "d_spa", "d_fre") if self.cfg.stage == "gan" else ("generator",)
    return {n: flat(self.devices.unreplicate(getattr(self.state, n)["params"])) for n in names}

  def outputs(self, lr_up: np.ndarray):
    """(img_out, img_fre) of the current generator on `lr_up` (NHWC), in batches of 8."""
    from sfmnet_jax.model.generator import jitted_apply  # pylint: disable=g-import-not-at-top
    params = self.devices.unreplicate(self.state.generator["params"])
    apply = jitted_apply(self.model)
    outs = ([], [])
    for i in range(0, len(lr_up), 8):
      chunk = lr_up[i:i + 8]
      padded = np.concatenate([chunk, np.zeros((8 - len(chunk),) + chunk.shape[1:], np.float32)])
      for kept, image in zip(outs, apply({"params": params}, padded)):
        kept.append(np.asarray(image)[:len(chunk)])
    return tuple(np.concatenate(kept) for kept in outs)

  def predict(self, lr_up: np.ndarray) -> np.ndarray:
    """img_out of the current generator on `lr_up` (NHWC)."""
    return self.outputs(lr_up)[0]
