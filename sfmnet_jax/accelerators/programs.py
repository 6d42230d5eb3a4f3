"""A config's training programs as a GPU or TPU host builds them, with abstract arguments.

`build(config, name, platform)` gives the PSNR step, the GAN step (generator
and both discriminators) or the generator's forward of the plain Flax networks
(no CPU kernels), with the shapes and dtypes of their replicated arguments
(the train state, or the parameters; the VGG parameters of the GAN step):
nothing is initialised or computed. The per-device batch comes with the
compile (`aot.compile_program`).
"""

import dataclasses
import functools
from typing import Callable, Tuple

NAMES = ("psnr", "gan", "forward")


@dataclasses.dataclass(frozen=True)
class Program:
  """`fn(replicated[0], data, *replicated[1:])` for a step (`data` = {"hr", "lr_up"}), or
  `fn(params, images)` for the forward."""
  name: str
  fn: Callable
  replicated: Tuple
  step: bool


def build(config, name: str, platform: str = "tpu") -> Program:
  """The program `name` (one of NAMES) of `config`, as it runs on `platform`."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import init_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
  if name not in NAMES:
    raise ValueError(f"unknown program {name!r}; one of {NAMES}")
  cfg = config.copy_and_resolve_references()
  if name == "forward":
    model = training.build_model(cfg, platform)
    params = jax.eval_shape(lambda: init_generator(model)["params"])
    return Program(name, lambda p, x: model.apply({"params": p}, x), (params,), False)
  cfg.stage = name
  if name == "gan" and not cfg.perceptual.weights:
    cfg.perceptual.weights = "random"  # speed and memory do not depend on the values
  model = training.build_model(cfg, platform)
  made = {}

  def make():
    state, made["static"], vgg = training.create_state(cfg, model, platform)
    return state, vgg

  state, vgg = jax.eval_shape(make)
  fn = functools.partial(steps.gan_step if name == "gan" else steps.psnr_step, **made["static"])
  return Program(name, fn, (state, vgg) if name == "gan" else (state,), True)


def on_one_device(program: Program, batch: int, size: int):
  """(fn, abstract arguments) of the program over a batch of `batch` images of `size` on one
  device: a step pmap-ed over a device axis of one (its gradients' all-reduce stays in the
  program), the forward jit-ed; for `jax.jit(fn).lower(*args)` on any platform."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.devices import AXIS  # pylint: disable=g-import-not-at-top
  image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  if not program.step:
    return program.fn, (*program.replicated, image)
  one = lambda t: jax.tree_util.tree_map(  # noqa: E731  (a leading axis of one device)
      lambda s: jax.ShapeDtypeStruct((1, *s.shape), s.dtype), t)
  args = (one(program.replicated[0]), one({"hr": image, "lr_up": image}),
          *map(one, program.replicated[1:]))
  return jax.pmap(program.fn, axis_name=AXIS), args
