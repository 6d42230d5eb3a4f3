"""`sfmnet-benchmark aot`: the real training programs compiled for a TPU or GPU that is not here.

  sfmnet-benchmark aot --target=tpu:v5e:2x2 [--config=configs/celeba_x8_tpu_pod.py]
                       [--per_device_batch=8] [--dtypes=bfloat16,float32] [--find_max_batch]
  sfmnet-benchmark aot --target=cuda:h100            # deviceless, from gpu_specs/h100_sxm.txtpb

A TPU topology comes from libtpu (`pip install sfmnet-jax[aot]`, or a folder
named by SFMNET_LIBTPU_DIR) through `jax.experimental.topologies`; a GPU from
the CUDA plugin (`jax-cuda12-plugin`) with a target description file. On their
compile-only devices, XLA builds the executables the config's training would
run: the PSNR step, the GAN step (generator and both discriminators), and the
forward, each over all of the target's devices (the batch split over them,
gradients averaged over them). `pmap` needs devices it can address, so each
is compiled as the equivalent `jit` of a `shard_map` over a Mesh of the
target's devices, the same per-device program (the output says so).

Per device it reports XLA's own figures, after fusion: memory (arguments,
temporaries, outputs, aliased, total) against the chip's memory; FLOPs and
bytes accessed (the compiled module's cost analysis); XLA's optimal time
where the TPU compiler gives one; the roofline time (max of FLOPs / peak and
bytes / bandwidth, chips in `CHIPS`) and images/s per chip; and with
--find_max_batch the largest per-device batch that fits, found by compiling
(two compiles give memory as a line in the batch, the third checks its
prediction). Progress and an ETA are printed while it compiles; JSON goes to
benchmark_results/aot_<target>.json. `roofline_for(json, measured_s)` puts a
step time measured on the device beside the compiled roofline.
"""

import dataclasses
import functools
import importlib.util
import os
import re
import time
from typing import Dict, Optional

import numpy as np

from sfmnet_jax.runtime import package_version

GPU_SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")
DEFAULT_LIBTPU_DIR = os.path.join(os.path.expanduser("~"), ".cache", "sfmnet_jax", "libtpu")
GIB = 1024 ** 3
# Custom calls that exist only on the CPU: this project's C++ kernels, XLA:CPU's LAPACK and
# DUCC FFT calls.
CPU_ONLY = re.compile(r"^(sfmnet_\w+|lapack_\w+|ducc_\w+)$")


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: float
  tflops: Dict[str, float]  # peak dense matrix TFLOP/s by compute dtype
  hbm_tb_per_s: float
  source: str


# By JAX's device_kind. float32 matrix products run as one bfloat16 pass on TPUs (JAX's
# default precision) and as TF32 on the H100's tensor cores.
CHIPS = {
    "TPU v5 lite": Chip(16 * GIB, {"bfloat16": 197.0, "float32": 197.0}, 0.819,
                        "Google Cloud TPU v5e documentation"),
    "TPU v4": Chip(32 * GIB, {"bfloat16": 275.0, "float32": 275.0}, 1.2288,
                   "Google Cloud TPU v4 documentation"),
    "TPU v5": Chip(95 * GIB, {"bfloat16": 459.0, "float32": 459.0}, 2.765,
                   "Google Cloud TPU v5p documentation"),
    "TPU v6 lite": Chip(32 * GIB, {"bfloat16": 918.0, "float32": 918.0}, 1.64,
                        "Google Cloud TPU v6e (Trillium) documentation"),
    "NVIDIA H100 80GB HBM3": Chip(80e9, {"bfloat16": 989.4, "float32": 494.7}, 3.35,
                                  "NVIDIA H100 SXM datasheet (dense, no sparsity)"),
}


class TargetUnavailable(RuntimeError):
  """The target's compiler is not installed here (the message says how to get it)."""


def find_libtpu() -> Optional[str]:
  """Path of libtpu.so: $TPU_LIBRARY_PATH, the installed `libtpu` package, or
  $SFMNET_LIBTPU_DIR (default ~/.cache/sfmnet_jax/libtpu, where .ci/run puts it)."""
  if os.environ.get("TPU_LIBRARY_PATH"):
    return os.environ["TPU_LIBRARY_PATH"]
  spec = importlib.util.find_spec("libtpu")
  folders = [os.path.dirname(spec.origin)] if spec and spec.origin else []
  folders.append(os.path.join(os.environ.get("SFMNET_LIBTPU_DIR", DEFAULT_LIBTPU_DIR), "libtpu"))
  for folder in folders:
    path = os.path.join(folder, "libtpu.so")
    if os.path.exists(path):
      return path
  return None


def prepare_environment(environ=os.environ) -> None:
  """Before JAX starts: the host's own backend stays the CPU, libtpu is found, and it asks
  no metadata server (none exists off a TPU VM)."""
  environ.setdefault("JAX_PLATFORMS", "cpu")
  environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")  # libtpu's start-up warnings about the VM
  environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
  # Compile-only: several processes may load libtpu at once (its lockfile guards TPU chips,
  # none of which are used here).
  environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  libtpu = find_libtpu()
  if libtpu:
    environ.setdefault("TPU_LIBRARY_PATH", libtpu)


def target_devices(target: str):
  """(compile-only devices, description) of "tpu:<topology>" (e.g. tpu:v5e:2x2) or
  "cuda:<spec>" (a name in gpu_specs/, e.g. h100, or a .txtpb path)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  platform, _, name = target.partition(":")
  if platform == "tpu":
    if not find_libtpu():
      raise TargetUnavailable(
          "libtpu is not installed: pip install 'sfmnet-jax[aot]' (or pip install "
          f"libtpu==0.0.42 --target {DEFAULT_LIBTPU_DIR}); nothing is downloaded at run time")
    topo = topologies.get_topology_desc(name, platform="tpu")
    return list(topo.devices), f"TPU topology {name}"
  if platform == "cuda":
    path = name if name.endswith(".txtpb") else os.path.join(GPU_SPECS, f"{name}_sxm.txtpb")
    if not os.path.exists(path):
      raise TargetUnavailable(f"no GPU description {path} (in {GPU_SPECS}: "
                              f"{sorted(os.listdir(GPU_SPECS))})")
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
      raise TargetUnavailable("the CUDA plugin is not installed: pip install "
                              "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2")
    with open(path) as f:
      spec = f.read()
    topo = topologies.get_topology_desc("", platform="cuda", target_config=spec,
                                        topology="1x1x1")
    return list(topo.devices), f"GPU from {os.path.basename(path)}"
  raise ValueError(f"unknown target {target!r}: tpu:<topology> (e.g. tpu:v5e:2x2) or "
                   "cuda:<name> (e.g. cuda:h100)")


def _programs(config, names):
  """{name: (function of (state or params, data[, vgg]), abstract arguments without the
  images, whether it is a train step)} of the plain networks the config trains (what a GPU
  or TPU host builds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import init_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import steps  # pylint: disable=g-import-not-at-top
  out = {}
  for name in names:
    cfg = config.copy_and_resolve_references()
    if name == "forward":
      model = training.build_model(cfg, "tpu")
      params = jax.eval_shape(lambda model=model: init_generator(model)["params"])
      out[name] = (lambda p, x, model=model: model.apply({"params": p}, x), (params,), False)
      continue
    cfg.stage = name
    if name == "gan" and not cfg.perceptual.weights:
      cfg.perceptual.weights = "random"  # speed and memory do not depend on the values
    model = training.build_model(cfg, "tpu")
    made = {}

    def make(cfg=cfg, model=model, made=made):
      state, made["static"], vgg = training.create_state(cfg, model, "tpu")
      return state, vgg

    state, vgg = jax.eval_shape(make)
    fn = functools.partial(steps.gan_step if name == "gan" else steps.psnr_step, **made["static"])
    out[name] = (fn, (state, vgg) if name == "gan" else (state,), True)
  return out


def compile_program(fn, replicated, step, devices, per_device_batch, size):
  """`fn` compiled for `devices` as a jit of a shard_map over them: the replicated
  arguments on every device, a batch of `per_device_batch` images per device (a train
  step's `{"hr", "lr_up"}` after its state, or the forward's images after its params)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.devices import AXIS  # pylint: disable=g-import-not-at-top
  mesh = Mesh(np.array(devices), (AXIS,))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
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
  compiled.sfmnet_lowered = lowered  # cost_of's FLOPs where the executable counts none
  compiled.sfmnet_num_devices = n
  return compiled, time.perf_counter() - t0


def _first(cost):
  return cost[0] if isinstance(cost, (list, tuple)) and cost else cost


def cost_of(compiled) -> Dict[str, float]:
  """XLA's cost analysis of the compiled (fused, per-device) module: the executable's own
  (TPU). The CUDA executable gives none: there XLA's HloCostAnalysis runs on its optimized
  HLO for the bytes, and the FLOPs come from the module before optimization (the optimized
  one hands its convolutions and matrix products to cuDNN / cuBLAS calls whose FLOPs it
  does not count; fusion moves no FLOP)."""
  cost = _first(compiled.cost_analysis())
  out = {}
  if not cost:
    import jax  # pylint: disable=g-import-not-at-top
    from jax._src.lib import xla_client  # pylint: disable=g-import-not-at-top
    module = compiled.runtime_executable().hlo_modules()[0]
    analyse = lambda m: xla_client._xla.hlo_module_cost_analysis(  # pylint: disable=protected-access  # noqa: E731
        jax.devices("cpu")[0].client, m)
    cost = analyse(module)
    lowered = getattr(compiled, "sfmnet_lowered", None)
    if lowered is not None:  # the whole (unpartitioned) program: per device, divided
      out["flops_source"] = "the module before optimization (cuDNN/cuBLAS calls uncounted after)"
      flops = analyse(lowered.compiler_ir("hlo").get_hlo_module()).get("flops", 0.0)
      cost = dict(cost, flops=flops / getattr(compiled, "sfmnet_num_devices", 1))
  out.update(flops=float(cost.get("flops", 0.0)),
             bytes_accessed=float(cost.get("bytes accessed", 0.0)))
  if cost.get("optimal_seconds", 0) > 0:  # XLA:TPU's own estimate, where it gives a real one
    out["xla_optimal_s"] = float(cost["optimal_seconds"])
  return out


def memory_of(compiled, chip: Optional[Chip]) -> Dict[str, float]:
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  out = {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes,
         "outputs": m.output_size_in_bytes, "aliased": m.alias_size_in_bytes, "total": total}
  if chip:
    out.update(device_memory=chip.hbm_bytes, fits=bool(total <= chip.hbm_bytes))
  return out


def custom_calls(compiled):
  text = compiled.as_text()
  return sorted(set(re.findall(r'custom_call_target="([\w.]+)"', text)))


def roofline(cost, chip: Optional[Chip], dtype: str, per_device_batch: int):
  if chip is None:
    return {}
  compute_s = cost["flops"] / (chip.tflops[dtype] * 1e12)
  memory_s = cost["bytes_accessed"] / (chip.hbm_tb_per_s * 1e12)
  step_s = max(compute_s, memory_s)
  return {"compute_bound_s": compute_s, "memory_bound_s": memory_s, "roofline_s": step_s,
          "bound": "compute" if compute_s >= memory_s else "memory",
          "images_per_s_per_chip": per_device_batch / step_s if step_s else None,
          "peak_tflops": chip.tflops[dtype], "hbm_tb_per_s": chip.hbm_tb_per_s,
          "chip_source": chip.source}


def roofline_for(result: dict, measured_s: float, program: str = "psnr",
                 dtype: str = "bfloat16") -> dict:
  """A step time measured on the device beside the compiled roofline of the same program."""
  row = next(r for r in result["rows"] if r["program"] == program and r["dtype"] == dtype)
  return {"program": program, "dtype": dtype, "measured_s": measured_s,
          "roofline_s": row["roofline_s"], "fraction_of_roofline": row["roofline_s"] / measured_s}


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


def max_batch(fn, replicated, step, devices, size, chip, start: int, first: dict, progress):
  """The largest per-device batch that fits `chip`: memory as a line through two compiles,
  then the predicted batch compiled (and lowered until it fits)."""
  b1, m1 = start, first["total"]
  b2 = 2 * start
  progress.start(f"  batch {b2} per device (memory slope)")
  compiled, seconds = compile_program(fn, replicated, step, devices, b2, size)
  progress.finish(seconds)
  m2 = memory_of(compiled, chip)["total"]
  per_image = (m2 - m1) / (b2 - b1)
  fixed = m1 - per_image * b1
  guess = int((chip.hbm_bytes - fixed) // per_image) if per_image > 0 else b2
  tried = {b1: m1, b2: m2}
  while guess >= 1:
    progress.start(f"  batch {guess} per device (predicted to fit)")
    compiled, seconds = compile_program(fn, replicated, step, devices, guess, size)
    progress.finish(seconds, extra=1)
    tried[guess] = memory_of(compiled, chip)["total"]
    if tried[guess] <= chip.hbm_bytes:
      return {"max_per_device_batch": guess, "bytes_per_image": per_image,
              "fixed_bytes": fixed, "compiled_batches": {str(k): v for k, v in tried.items()}}
    guess = int(guess * chip.hbm_bytes / tried[guess]) - 1
  return {"max_per_device_batch": 0, "compiled_batches": {str(k): v for k, v in tried.items()}}


def run(config, target: str, per_device_batch: int = 8, dtypes=("bfloat16", "float32"),
        programs=("psnr", "gan", "forward"), find_max_batch: bool = False,
        on_row=None) -> dict:
  """Compiles `programs` of `config` for `target` in each of `dtypes` (see module doc);
  `on_row(result)` is called with the result so far after each program (long runs keep
  what they compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  devices, description = target_devices(target)
  kind = devices[0].device_kind
  chip = CHIPS.get(kind)
  size = config.data.get("patch_size") or 128
  print(f"{description}: {len(devices)} x {kind} ({devices[0].platform}); memory "
        f"{chip.hbm_bytes / GIB:.1f} GiB per chip" if chip else "(no chip data)", flush=True)
  progress = _Progress(len(programs) * len(dtypes))
  rows = []
  result = {"benchmark": "aot", "target": target, "description": description,
            "config": config.to_dict(), "rows": rows,
            "versions": {"jax": jax.__version__, "libtpu": package_version("libtpu"),
                         "jax-cuda12-plugin": package_version("jax-cuda12-plugin")}}
  for dtype in dtypes:
    cfg = config.copy_and_resolve_references()
    cfg.dtype = dtype
    built = _programs(cfg, programs)
    for name in programs:
      fn, replicated, step = built[name]
      progress.start(f"{name} ({dtype}, {len(devices)} devices x {per_device_batch} images)")
      compiled, seconds = compile_program(fn, replicated, step, devices, per_device_batch,
                                          size)
      progress.finish(seconds)
      cost = cost_of(compiled)
      row = {"program": name, "dtype": dtype, "devices": len(devices), "device_kind": kind,
             "platform": devices[0].platform, "per_device_batch": per_device_batch,
             "global_batch": per_device_batch * len(devices), "image_size": size,
             "compiled_as": "jit(shard_map) over a Mesh of the target's devices (pmap needs "
                            "addressable devices)",
             "compile_s": seconds, "memory": memory_of(compiled, chip), **cost,
             **roofline(cost, chip, dtype, per_device_batch),
             "cpu_only_custom_calls": [c for c in custom_calls(compiled) if CPU_ONLY.match(c)]}
      if find_max_batch and chip and name != "forward":
        row.update(max_batch(fn, replicated, step, devices, size, chip, per_device_batch,
                             row["memory"], progress))
      rows.append(row)
      _print_row(row)
      if on_row:
        on_row(result)
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
