"""Generator and train-step speed: latency, throughput, compile time, memory, GFLOP/s.

Used by `sfmnet-benchmark model`. Every figure is measured after
compilation (compile time reported separately) as the median of `repeats`
timed calls; FLOPs come from XLA's cost analysis of the compiled computation.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax import devices, runtime
from sfmnet_jax.benchmarks import roofline
from sfmnet_jax.cpu import kernels as cpu_kernels

# The release's generator, C=64, 128x128 (analytic count of its convolutions,
# attention and FFT products): the figure the PyTorch timings refer to.
RELEASE_GFLOP_PER_IMAGE = 61.4
# Untimed train steps first: the first compiles nothing but faults its buffers in; the
# second may too (the block cache's second block, while the first step's is still live).
WARMUP_STEPS = 2


def _cost(compiled):
  """(flops, memory dict) of a compiled computation, where the backend reports them."""
  flops, memory = None, {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) + cpu_kernels.custom_call_flops(compiled.as_text())
    flops = flops or None
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    m = compiled.memory_analysis()
    memory = {k: int(getattr(m, k)) for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                              "output_size_in_bytes") if hasattr(m, k)}
  except Exception:  # pylint: disable=broad-except
    pass
  return flops, memory


def peak_memory():
  """Peak bytes in use on device 0 where the backend tracks it, and the process's peak RSS."""
  out = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def _summary(name, batch, compile_s, times, flops):
  med = statistics.median(times)
  row = {"name": name, "batch": batch, "compile_s": compile_s, "median_s": med,
         "min_s": min(times), "times_s": times, "s_per_image": med / batch,
         "images_per_s": batch / med}
  if flops:
    row.update(gflop_per_call=flops / 1e9, gflop_per_s=flops / 1e9 / med)
  return row


def compile_forward(model, params, batch, size):
  """(compiled `jit(model.apply)`, its arguments, compile seconds) at the given batch size."""
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, *size, 3)), jnp.float32)
  apply = jax.jit(lambda p, v: model.apply({"params": p}, v))
  t0 = time.perf_counter()
  compiled = apply.lower(params, x).compile()
  return compiled, (params, x), time.perf_counter() - t0


def forward(model, params, batch, size, repeats):
  """Generator forward on one device: `jit(model.apply)` at the given batch size."""
  compiled, (params, x), lower_compile_s = compile_forward(model, params, batch, size)
  flops, memory = _cost(compiled)
  row = _summary(f"forward_b{batch}", batch, lower_compile_s,
                 runtime.time_calls(compiled, (params, x), repeats), flops)
  row["memory"] = memory
  return row


def train_step_and_args(config, batch, platform=None, abstract=False):
  """The pmap-ed step of `config.stage` built for `platform` and its arguments at a global
  batch: device arrays over the local devices, or with `abstract` their shapes for one
  device holding the whole batch (nothing initialised or compiled)."""
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
  n = 1 if abstract else jax.local_device_count()
  if batch % n:
    raise ValueError(f"batch {batch} does not split over {n} local devices")
  model = training.build_model(config, platform)
  made = {}

  def make():
    state, made["static"], vgg_params = training.create_state(config, model, platform)
    return state, vgg_params

  size = config.data.patch_size or 128
  if abstract:
    state, vgg_params = jax.eval_shape(make)
    per_device = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda s: jax.ShapeDtypeStruct((n, *s.shape), s.dtype), t)
    data = {k: jax.ShapeDtypeStruct((n, batch // n, size, size, 3), jnp.float32)
            for k in ("hr", "lr_up")}
  else:
    state, vgg_params = make()
    per_device = devices.replicate
    rng = np.random.default_rng(0)
    data = {k: rng.uniform(size=(n, batch // n, size, size, 3)).astype(np.float32)
            for k in ("hr", "lr_up")}
  static = made["static"]
  if config.stage == "gan":
    return (steps.pmap_train_step(steps.gan_step, **static),
            (per_device(state), data, per_device(vgg_params)))
  return steps.pmap_train_step(steps.psnr_step, **static), (per_device(state), data)


def forward_and_args(config, batch, platform=None):
  """`model.apply` of the config's generator built for `platform`, and abstract arguments."""
  from sfmnet_jax.model.generator import init_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  model = training.build_model(config, platform)
  params = jax.eval_shape(lambda: init_generator(model)["params"])
  size = config.data.patch_size or 128
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return (lambda p, v: model.apply({"params": p}, v)), (params, x)


def compile_train_step(config, batch):
  """(compiled pmap-ed step of `config.stage`, its arguments, compile seconds) at a global batch."""
  step_fn, args = train_step_and_args(config, batch)
  t0 = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  return compiled, args, time.perf_counter() - t0


def accelerator_estimates(config, batch, forward_batch):
  """XLA's cost analysis of the train step (`batch` images) and of the forward at
  `forward_batch`, lowered for one device of each of `roofline.DEVICES` as they run there
  (the plain model), with their roofline estimates."""
  step = roofline.estimates(
      lambda platform: train_step_and_args(config, batch, platform, abstract=True), config.dtype)
  forward = roofline.estimates(lambda platform: forward_and_args(config, forward_batch, platform),
                               config.dtype)
  return {f"{config.stage}_step_b{batch}": step, f"forward_b{forward_batch}": forward}


def stepper(compiled, args):
  """A function that runs one compiled step, waits for it and returns its metrics.

  Each call feeds the state the previous call returned (a step consumes its
  state: it is donated on accelerators).
  """
  current = list(args)

  def call():
    new_state, metrics = compiled(*current)
    jax.block_until_ready(new_state)
    current[0] = new_state
    return metrics

  return call


def train_step(config, batch, repeats):
  """One pmap-ed training step (PSNR or GAN stage per `config.stage`) at a global batch."""
  n = jax.local_device_count()
  compiled, args, compile_s = compile_train_step(config, batch)
  flops, memory = _cost(compiled)
  step = stepper(compiled, args)
  times = []  # not time_calls: each call consumes the state
  for _ in range(WARMUP_STEPS + repeats):
    t0 = time.perf_counter()
    metrics = step()
    times.append(time.perf_counter() - t0)
  if not float(np.asarray(metrics["finite"]).min()):
    raise RuntimeError(f"{config.stage} step produced a non-finite loss")
  row = _summary(f"{config.stage}_step_b{batch}", batch, compile_s, times[WARMUP_STEPS:],
                 flops * n if flops else None)
  row["memory"] = memory
  return row
