r"""sfmnet-benchmark aot [--target=tpu:v5e:2x2] [--config=configs/celeba_x8_tpu_pod.py]
                     [--config.FIELD=VALUE ...] [--per_device_batch=8]
                     [--dtypes=bfloat16,float32] [--programs=psnr,gan,forward]
                     [--find_max_batch] [--breakdown]
  sfmnet-benchmark aot --target=cuda:h100 --dtypes=bfloat16   # from gpu_specs/h100_sxm.txtpb

The config's training programs compiled for a TPU topology (libtpu: pip install
'sfmnet-jax[aot]') or a GPU description (the CUDA plugin) without the device:
per device, XLA's memory against the chip's, its FLOPs and bytes accessed after
fusion, the roofline time and images/s per chip, with --find_max_batch the
largest per-device batch that fits, and with --breakdown where each program's
bytes and FLOPs go by model part (a table per program, docs/aot.md). Nothing
runs on a device; the host stays a CPU host.
"""

import os
import re

from sfmnet_jax import cli
from sfmnet_jax.accelerators.targets import TargetUnavailable
from sfmnet_jax.apps.benchmark import common

ERRORS = (TargetUnavailable,)


def define_flags(fv, argv):
  common.define_config(fv, argv, "celeba_x8_tpu_pod")
  f = cli.flags
  f.DEFINE_string("target", "tpu:v5e:2x2", "tpu:<topology> (a name libtpu knows) or "
                  "cuda:<name in accelerators/gpu_specs/ or a .txtpb path>.", flag_values=fv)
  f.DEFINE_integer("per_device_batch", 8, "Images per device.", flag_values=fv)
  f.DEFINE_list("dtypes", ["bfloat16", "float32"], "Compute dtypes.", flag_values=fv)
  f.DEFINE_list("programs", ["psnr", "gan", "forward"], "What to compile.", flag_values=fv)
  f.DEFINE_bool("find_max_batch", False, "Also find the largest per-device batch of the train "
                "steps that fits (2-3 more compiles each).", flag_values=fv)
  f.DEFINE_bool("breakdown", False, "Also write each program's bytes and FLOPs by model part "
                "(aot_<target>_breakdown.json beside the output).", flag_values=fv)
  f.DEFINE_string("hlo_dir", None, "Write each compiled program's optimized HLO text here "
                  "(<program>_<dtype>.hlo.txt), for `accelerators.breakdown` or a reader.",
                  flag_values=fv)
  common.define_output(fv, "aot_<target>")


def run(fv):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.accelerators import aot, breakdown  # pylint: disable=g-import-not-at-top
  name = "aot_" + re.sub(r"[^\w]+", "_", fv.target)
  path = config_flags.get_config_filename(fv["config"])
  tables = []

  def save(result, compiled):
    if fv.hlo_dir:
      row = result["rows"][-1]
      os.makedirs(fv.hlo_dir, exist_ok=True)
      with open(os.path.join(fv.hlo_dir, f"{row['program']}_{row['dtype']}.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    if fv.breakdown:
      row = result["rows"][-1]
      tables.append(breakdown.breakdown(compiled, row, fv.config.model.num_resblocks))
      breakdown.print_table(tables[-1])
    common.write_json({**result, "config_file": path}, name, fv.output)
    if fv.breakdown:
      out = (fv.output[:-len(".json")] if fv.output and fv.output.endswith(".json")
             else fv.output or f"{common.BENCHMARK_DIR}/{name}")
      common.write_json({"benchmark": "aot_breakdown", "target": fv.target,
                         "config_file": path, "tables": tables}, name, out + "_breakdown.json")

  result = aot.run(fv.config, fv.target, fv.per_device_batch, tuple(fv.dtypes),
                   tuple(fv.programs), fv.find_max_batch, on_row=save)
  return {**result, "config_file": path}
