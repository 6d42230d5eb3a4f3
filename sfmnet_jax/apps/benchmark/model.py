r"""sfmnet-benchmark model [--config=configs/default.py] [--config.FIELD=VALUE ...]
                       [--batch_sizes=1,8,32] [--stages=psnr,gan] [--notrain] [--repeats=5]

The config's generator here (default configs/default.py: the release's C=64;
images of data.patch_size, 128x128 without one): forward latency at batch 1
and throughput at larger batches on one device, the PSNR-stage and GAN-stage
train steps at the config's batch_size (pmap over the local devices), compile
times, memory, and GFLOP/s of the model's work (XLA's count for the plain
model). The GAN step uses random VGG weights unless the config names a file.

  sfmnet-benchmark model --config.model.num_features=16
  sfmnet-benchmark model --config.model.conv_impl=xla       # the exact mode
  sfmnet-benchmark model --config.dtype=bfloat16 --config.model.remat=True
"""

from sfmnet_jax import cli, runtime
from sfmnet_jax.apps.benchmark import common


def define_flags(fv, argv):
  common.define_config(fv, argv, "default")
  f = cli.flags
  f.DEFINE_list("batch_sizes", ["1", "8", "32"], "Forward batch sizes.", flag_values=fv)
  f.DEFINE_list("stages", ["psnr", "gan"], "Train steps to time.", flag_values=fv)
  f.DEFINE_bool("train", True, "Time the train steps.", flag_values=fv)
  f.DEFINE_integer("repeats", 5, "Timed calls per figure (median).", flag_values=fv)
  common.define_output(fv, "model_<platform>_<dtype>_c<width>")


def run(fv):
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.benchmarks import model as bm  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import init_variables  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  batch_sizes = common.int_list(fv, "batch_sizes")
  config = fv.config.copy_and_resolve_references()
  if not config.perceptual.weights:
    config.perceptual.weights = "random"  # the GAN step's speed does not depend on VGG's values
  size, c = bm.image_size(config), config.model.num_features
  info = runtime.machine_info()
  print(f"SFMNet C={c}, {size}x{size}, {config.dtype} compute"
        f"{', remat' if config.model.remat else ''}, conv_impl={config.model.conv_impl}, on "
        f"{info['device']} ({info['platform']}, {info['device_count']} devices)")
  model = training.build_model(config)
  params = jax.device_put(init_variables(model, config.seed)["params"])
  rows = []

  def show(row):
    rows.append(row)
    extra = f", {row['gflop_per_s']:.0f} GFLOP/s" if row.get("gflop_per_s") else ""
    print(f"  {row['name']:<16} {row['median_s'] * 1e3:9.1f} ms/call  "
          f"{row['s_per_image'] * 1e3:8.1f} ms/image  {row['images_per_s']:8.2f} images/s  "
          f"compile {row['compile_s']:.1f} s{extra}", flush=True)

  for b in batch_sizes:
    show(bm.forward(model, params, b, (size, size), fv.repeats,
                    bm.model_flops(config, "forward", b)))
  if fv.train:
    for stage in fv.stages:
      cfg = config.copy_and_resolve_references()
      cfg.stage = stage
      show(bm.train_step(cfg, cfg.batch_size, max(2, fv.repeats // 2),
                         bm.model_flops(cfg, stage, cfg.batch_size)))
  result = {"benchmark": "model", "config": config.to_dict(), "num_features": c, "size": size,
            "dtype": config.dtype, "remat": config.model.remat,
            "conv_impl": config.model.conv_impl, "rows": rows, "memory": bm.peak_memory(),
            "machine": info, "release_gflop_per_image": bm.RELEASE_GFLOP_PER_IMAGE}
  print("  peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB"
                                      for k, v in result["memory"].items()))
  name = (f"model_{info['platform']}_{config.dtype}_c{c}"
          + ("_remat" if config.model.remat else ""))
  common.write_json(result, name, fv.output)
  return result
