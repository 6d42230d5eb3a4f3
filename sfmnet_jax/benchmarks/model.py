"""Generator and train-step speed here: latency, throughput, compile time, memory, GFLOP/s.

Used by `sfmnet-benchmark model`. Every figure is measured after compilation
(compile time reported separately) as the median of `repeats` timed calls
(`runtime.time_calls`). FLOPs are the model's work: XLA's count for the plain
model's program (`accelerators.cost`), whichever implementation runs it here
(the CPU plugin's kernels, whose calls XLA does not count, or XLA's ops).
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sfmnet_jax import devices, runtime
from sfmnet_jax.accelerators import cost, programs

# The release's generator, C=64, 128x128 (analytic count of its convolutions,
# attention and FFT products): the figure the PyTorch timings refer to.
RELEASE_GFLOP_PER_IMAGE = 61.4
# Untimed train steps first: the first compiles nothing but faults its buffers in; the
# second may too (the block cache's second block, while the first step's is still live).
WARMUP_STEPS = 2


def image_size(config) -> int:
  return config.data.get("patch_size") or 128


def model_flops(config, name: str, batch: int) -> float:
  """XLA's FLOP count of the plain model's program `name` ("forward", "psnr", "gan") of
  `config` at a global `batch` on one device (lowered, nothing compiled or run)."""
  plain = config.copy_and_resolve_references()
  plain.model.conv_impl = "xla"
  program = programs.build(plain, name, "cpu")
  fn, args = programs.on_one_device(program, batch, image_size(config))
  return cost.xla_cost(jax.jit(fn).lower(*args))["flops"]


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


def forward(model, params, batch, size, repeats, flops=None):
  """Generator forward on one device: `jit(model.apply)` at the given batch size."""
  compiled, (params, x), compile_s = compile_forward(model, params, batch, size)
  row = _summary(f"forward_b{batch}", batch, compile_s,
                 runtime.time_calls(lambda: compiled(params, x), repeats), flops)
  row["memory"] = cost.memory_of(compiled)
  return row


def train_step_and_args(config, batch):
  """The pmap-ed step of `config.stage` and its arguments at a global batch: device arrays
  over the local devices (random images; the state initialised by the config's seed)."""
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
  n = jax.local_device_count()
  if batch % n:
    raise ValueError(f"batch {batch} does not split over {n} local devices")
  model = training.build_model(config)
  state, static, vgg_params = training.create_state(config, model)
  size = image_size(config)
  rng = np.random.default_rng(0)
  data = {k: rng.uniform(size=(n, batch // n, size, size, 3)).astype(np.float32)
          for k in ("hr", "lr_up")}
  if config.stage == "gan":
    return (steps.pmap_train_step(steps.gan_step, **static),
            (devices.replicate(state), data, devices.replicate(vgg_params)))
  return steps.pmap_train_step(steps.psnr_step, **static), (devices.replicate(state), data)


def compile_train_step(config, batch):
  """(compiled pmap-ed step of `config.stage`, its arguments, compile seconds) at a global batch."""
  step_fn, args = train_step_and_args(config, batch)
  t0 = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  return compiled, args, time.perf_counter() - t0


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


def train_step(config, batch, repeats, flops=None):
  """One pmap-ed training step (PSNR or GAN stage per `config.stage`) at a global batch."""
  compiled, args, compile_s = compile_train_step(config, batch)
  step = stepper(compiled, args)
  metrics = []
  times = runtime.time_calls(lambda: metrics.append(step()), repeats, warmup=WARMUP_STEPS,
                             sync=lambda _: None)
  if not float(np.asarray(metrics[-1]["finite"]).min()):
    raise RuntimeError(f"{config.stage} step produced a non-finite loss")
  row = _summary(f"{config.stage}_step_b{batch}", batch, compile_s, times, flops)
  row["memory"] = cost.memory_of(compiled)
  return row
