r"""sfmnet-benchmark profile [--config=configs/default.py] [--config.FIELD=VALUE ...]
                         [--program=psnr|gan|forward] [--forward_batch=1] [--top=15]

Where one call of the config's PSNR step (or GAN step, or forward) spends its
time here: XLA op time by kind (convolution, dot, FFT, ... or which C++
kernel), by SFMNet block (forward and backward apart) and for the slowest ops,
from a `jax.profiler` trace matched to the optimised HLO.

  sfmnet-benchmark profile --config.model.num_features=32 --program=gan
"""

from sfmnet_jax import cli, runtime
from sfmnet_jax.apps.benchmark import common

PROGRAMS = ("psnr", "gan", "forward")


def define_flags(fv, argv):
  common.define_config(fv, argv, "default")
  f = cli.flags
  f.DEFINE_enum("program", "psnr", list(PROGRAMS), "What to profile.", flag_values=fv)
  f.DEFINE_integer("forward_batch", 1, "The forward's batch size (the steps take the "
                   "config's batch_size).", flag_values=fv)
  f.DEFINE_integer("top", 15, "How many of the slowest ops to list.", flag_values=fv)
  f.DEFINE_string("hlo_out", None, "Write the compiled HLO text here.", flag_values=fv)
  f.DEFINE_integer("repeats", 3, "Untimed-by-the-profiler calls for the wall time (median).",
                   flag_values=fv)
  common.define_output(fv, "profile_<program>_c<width>_b<batch>")


def run(fv):
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.benchmarks import model as bm  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.benchmarks import profile as bp  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import init_variables  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  cfg = fv.config.copy_and_resolve_references()
  cfg.stage = "gan" if fv.program == "gan" else "psnr"
  if not cfg.perceptual.weights:
    cfg.perceptual.weights = "random"
  size = bm.image_size(cfg)
  if fv.program == "forward":
    batch = fv.forward_batch
    model = training.build_model(cfg)
    params = jax.device_put(init_variables(model, cfg.seed)["params"])
    compiled, args, compile_s = bm.compile_forward(model, params, batch, (size, size))

    def call():
      jax.block_until_ready(compiled(*args))
  else:
    batch = cfg.batch_size
    compiled, args, compile_s = bm.compile_train_step(cfg, batch)
    call = bm.stepper(compiled, args)
  info = runtime.machine_info()
  c = cfg.model.num_features
  title = (f"{fv.program} C={c} batch {batch}, {size}x{size}, {cfg.dtype}, on {info['device']}")
  hlo = compiled.as_text()
  if fv.hlo_out:
    with open(fv.hlo_out, "w") as f:
      f.write(hlo)
  result = bp.profile(call, hlo, repeats=max(1, fv.repeats), top=fv.top)
  bp.print_profile(result, title)
  result.update(benchmark="profile", program=fv.program, config=cfg.to_dict(), num_features=c,
                batch=batch, size=size, dtype=cfg.dtype, compile_s=compile_s, machine=info)
  common.write_json(result, f"profile_{fv.program}_c{c}_b{batch}", fv.output)
  return result
