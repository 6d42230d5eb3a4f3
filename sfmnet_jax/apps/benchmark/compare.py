r"""sfmnet-benchmark compare --release_dir=PATH/TO/SFMNet [--config=configs/default.py]
                         [--widths=16,32,64] [--conv_algorithms=auto,winograd] [--rounds=1]

The authors' PyTorch release and this port in one run on this machine, for
each width: the generator's forward at batch 1 and 8 (128x128) and the
PSNR-stage step at batch 8, as ratios (release time / port time: above 1 the
port is faster). The port runs the config at each width (`--conv_algorithms`:
its model.conv_algorithm values, "xla" for model.conv_impl="xla"); the release
is a checkout of github.com/wcy-cs/SFMNet in a Python with torch and einops.
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common
from sfmnet_jax.parity.checkout import ReleaseUnavailable

ERRORS = (ReleaseUnavailable,)


def define_flags(fv, argv):
  common.define_config(fv, argv, "default")
  f = cli.flags
  f.DEFINE_string("release_dir", None, "A checkout of github.com/wcy-cs/SFMNet.", flag_values=fv)
  f.DEFINE_list("widths", ["16", "32", "64"], "Generator widths to compare.", flag_values=fv)
  f.DEFINE_list("conv_algorithms", ["auto"], "model.conv_algorithm values to time the port "
                "with ('xla': model.conv_impl='xla').", flag_values=fv)
  f.DEFINE_integer("rounds", 1, "Turns of release and port per width; medians over them (a "
                   "drifting machine weighs on both alike).", flag_values=fv)
  f.DEFINE_integer("repeats", 5, "Timed calls per figure (median).", flag_values=fv)
  common.define_output(fv, "compare_<platform>")


def run(fv):
  from sfmnet_jax.benchmarks import versus_release  # pylint: disable=g-import-not-at-top
  result = versus_release.compare(fv.release_dir, fv.config, common.int_list(fv, "widths"),
                                  fv.repeats, fv.conv_algorithms, fv.rounds)
  common.write_json(result, f"compare_{result['machine']['platform']}", fv.output)
  return result
