"""The real training programs compiled for a TPU or GPU that is not here (`sfmnet-benchmark aot`).

On a target's compile-only devices (`targets.py`), XLA builds the executables
the config's training would run (`programs.py`): the PSNR step, the GAN step
(generator and both discriminators), and the forward, each over all of the
target's devices (the batch split over them, gradients averaged over them).
`pmap` needs devices it can address, so each is compiled as the equivalent
`jit` of a `shard_map` over a Mesh of the target's devices, the same
per-device program (the output says so).

Per device it reports XLA's own figures, after fusion (`cost.py`): memory
(arguments, temporaries, outputs, aliased, total) against the chip's memory;
FLOPs and bytes accessed; XLA's optimal time where the TPU compiler gives one;
the roofline time and images/s per chip (`chips.py`); and with
`find_max_batch` the largest per-device batch that fits, found by compiling
(two compiles give memory as a line in the batch, the third checks its
prediction). Progress and an ETA are printed while it compiles.
"""

import time

import numpy as np

from sfmnet_jax.accelerators import chips, cost, programs
from sfmnet_jax.accelerators.chips import GIB
from sfmnet_jax.accelerators.targets import target_devices
from sfmnet_jax.runtime import package_version


def compile_program(program: programs.Program, devices, per_device_batch, size):
  """The program compiled for `devices` as a jit of a shard_map over them: the replicated
  arguments on every device, a batch of `per_device_batch` images per device (a train
  step's `{"hr", "lr_up"}` after its state, or the forward's images after its params).
  Returns (compiled, lowered, compile seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.devices import AXIS  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(devices), (AXIS,))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  fn, replicated, step = program.fn, program.replicated, program.step
  n = len(devices)
  image = jax.ShapeDtypeStruct((n * per_device_batch, size, size, 3), np.float32, sharding=split)
  if step:
    data = {"hr": image, "lr_up": image}
    specs = (P(), {"hr": P(AXIS), "lr_up": P(AXIS)}) + (P(),) * (len(replicated) - 1)
    args = (replicated[0], data) + tuple(replicated[1:])
    out_specs = (P(), P())
  else:  # the forward: params, images
    specs, args, out_specs = (P(), P(AXIS)), (replicated[0], image), P(AXIS)
  args = jax.tree_util.tree_map(
      lambda s: s if getattr(s, "sharding", None) is not None else
      jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), args)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=out_specs, check_vma=False)
  jitted = jax.jit(mapped, donate_argnums=(0,) if step else ())
  t0 = time.perf_counter()
  lowered = jitted.trace(*args).lower()
  compiled = lowered.compile()
  return compiled, lowered, time.perf_counter() - t0


class _Progress:
  """Prints each compile as it starts, with an ETA from the compiles so far."""

  def __init__(self, total: int):
    self.total, self.done, self.seconds = total, 0, 0.0

  def start(self, what: str):
    eta = (f", about {self.seconds / self.done * (self.total - self.done) / 60:.1f} min left"
           if self.done else "")
    print(f"[{self.done + 1}/{self.total}] compiling {what}{eta}", flush=True)

  def finish(self, seconds: float, extra: int = 0):
    self.done += 1
    self.total += extra
    self.seconds += seconds


def max_batch(program, devices, size, chip, start: int, first: dict, progress):
  """The largest per-device batch that fits `chip`: memory as a line through two compiles,
  then the predicted batch compiled (and lowered until it fits)."""
  b1, m1 = start, first["total"]
  b2 = 2 * start
  progress.start(f"  batch {b2} per device (memory slope)")
  compiled, _, seconds = compile_program(program, devices, b2, size)
  progress.finish(seconds)
  m2 = cost.memory_of(compiled)["total"]
  per_image = (m2 - m1) / (b2 - b1)
  fixed = m1 - per_image * b1
  guess = int((chip.hbm_bytes - fixed) // per_image) if per_image > 0 else b2
  tried = {b1: m1, b2: m2}
  while guess >= 1:
    progress.start(f"  batch {guess} per device (predicted to fit)")
    compiled, _, seconds = compile_program(program, devices, guess, size)
    progress.finish(seconds, extra=1)
    tried[guess] = cost.memory_of(compiled)["total"]
    if tried[guess] <= chip.hbm_bytes:
      return {"max_per_device_batch": guess, "bytes_per_image": per_image,
              "fixed_bytes": fixed, "compiled_batches": {str(k): v for k, v in tried.items()}}
    guess = int(guess * chip.hbm_bytes / tried[guess]) - 1
  return {"max_per_device_batch": 0, "compiled_batches": {str(k): v for k, v in tried.items()}}


def run(config, target: str, per_device_batch: int = 8, dtypes=("bfloat16", "float32"),
        names=("psnr", "gan", "forward"), find_max_batch: bool = False,
        on_row=None) -> dict:
  """Compiles the programs `names` of `config` for `target` in each of `dtypes` (see the
  module doc); `on_row(result, compiled)` is called after each program with the result so
  far and the compiled program (long runs keep what they compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices, description = target_devices(target)
  kind = devices[0].device_kind
  chip = chips.CHIPS.get(kind)
  size = config.data.get("patch_size") or 128
  print(f"{description}: {len(devices)} x {kind} ({devices[0].platform}); memory "
        f"{chip.hbm_bytes / GIB:.1f} GiB per chip" if chip else "(no chip data)", flush=True)
  progress = _Progress(len(names) * len(dtypes))
  rows = []
  result = {"benchmark": "aot", "target": target, "description": description,
            "config": config.to_dict(), "rows": rows,
            "versions": {"jax": jax.__version__, "libtpu": package_version("libtpu"),
                         "jax-cuda12-plugin": package_version("jax-cuda12-plugin")}}
  for dtype in dtypes:
    cfg = config.copy_and_resolve_references()
    cfg.dtype = dtype
    for name in names:
      program = programs.build(cfg, name, devices[0].platform)
      progress.start(f"{name} ({dtype}, {len(devices)} devices x {per_device_batch} images)")
      compiled, lowered, seconds = compile_program(program, devices, per_device_batch, size)
      progress.finish(seconds)
      figures = cost.xla_cost(compiled, lowered, len(devices))
      row = {"program": name, "dtype": dtype, "devices": len(devices), "device_kind": kind,
             "platform": devices[0].platform, "per_device_batch": per_device_batch,
             "global_batch": per_device_batch * len(devices), "image_size": size,
             "compiled_as": "jit(shard_map) over a Mesh of the target's devices (pmap needs "
                            "addressable devices)",
             "compile_s": seconds,
             "memory": cost.memory_of(compiled, chip.hbm_bytes if chip else None), **figures,
             "bytes_per_image": figures["bytes_accessed"] / per_device_batch,
             **chips.roofline(figures, chip, dtype, per_device_batch),
             "cpu_only_custom_calls": cost.cpu_only_calls(compiled)}
      if find_max_batch and chip and name != "forward":
        row.update(max_batch(program, devices, size, chip, per_device_batch, row["memory"],
                             progress))
      rows.append(row)
      _print_row(row)
      if on_row:
        on_row(result, compiled)
  return result


def _print_row(r):
  m = r["memory"]
  line = (f"  {r['program']:<7s} {r['dtype']:<8s} compile {r['compile_s']:6.1f} s  memory "
          f"{m['total'] / GIB:6.2f} GiB (args {m['arguments'] / GIB:.2f}, temps "
          f"{m['temporaries'] / GIB:.2f})  {r['flops'] / 1e9:9.1f} GFLOP  "
          f"{r['bytes_accessed'] / 1e9:7.2f} GB")
  if "roofline_s" in r:
    line += (f"  roofline {r['roofline_s'] * 1e3:7.2f} ms ({r['bound']})  "
             f"{r['images_per_s_per_chip']:7.1f} img/s/chip")
  if "max_per_device_batch" in r:
    line += f"  max batch/device {r['max_per_device_batch']}"
  print(line, flush=True)
