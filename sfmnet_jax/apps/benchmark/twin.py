r"""sfmnet-benchmark twin --release_dir=PATH/TO/SFMNet --output=DIR [--config=configs/demo.py]
                      [--config.FIELD=VALUE ...] [--seeds=K] [--margin_db=0.05]
                      [--release_python=python] [--reference=port:FIELD=VALUE[,...]]
                      [--init=release|port]

The release's training and the port's side by side, from the same init on the
same batches, for what the config trains (its width, data, batch, learning
rate, stage and num_train_steps; evaluations at step 0, every eval_every steps
and at the end): every loss term of both per step, where they part, both
sides' test PSNR/SSIM and gains over bicubic, their outputs and parameters
against each other, and with --seeds=K a paired equivalence test of the gains
against +-margin_db (parity/twin.py, docs/twin.md). Finished pairs are kept in
DIR/pairs/ and reused when the command runs again.

--reference=port:FIELD=VALUE[,FIELD=VALUE] puts the port itself, with those
config changes, where the release would be (PSNR stage, no checkout needed):
two numerical modes of the port from the same weights on the same batches,
e.g. the default CPU mode against the exact mode (model.conv_impl=xla).
--init=port starts both sides from the port's initial generator for the seed
(PyTorch's default distributions, JAX's draw) instead of the release's.

  sfmnet-benchmark twin --release_dir=../SFMNet --output=twin_x4 --seeds=5
  sfmnet-benchmark twin ... --config.stage=gan --config.init_from=PSNR_GENERATOR.npz
  sfmnet-benchmark twin --reference=port:model.conv_impl=xla --output=modes_x4 --seeds=5
"""

from sfmnet_jax import cli
from sfmnet_jax.apps.benchmark import common
from sfmnet_jax.parity.checkout import ReleaseUnavailable

ERRORS = (ReleaseUnavailable,)


def define_flags(fv, argv):
  common.define_config(fv, argv, "demo")
  f = cli.flags
  f.DEFINE_string("release_dir", None, "A checkout of github.com/wcy-cs/SFMNet.", flag_values=fv)
  f.DEFINE_string("output", None, "The twin's folder (its JSON, pictures, pairs).",
                  flag_values=fv)
  f.DEFINE_integer("seeds", 1, "Independent pairs, seeds config.seed, config.seed + 1, ...",
                   flag_values=fv)
  f.DEFINE_float("margin_db", 0.05, "The equivalence margin of the paired test (dB of PSNR "
                 "gain).", flag_values=fv)
  f.DEFINE_string("release_python", "python", "A Python with torch and einops.", flag_values=fv)
  f.DEFINE_string("reference", "release", "The side the port is compared with: the release, "
                  "or port:FIELD=VALUE[,FIELD=VALUE] (the port with those config changes).",
                  flag_values=fv)
  f.DEFINE_enum("init", "release", ["release", "port"], "Whose initial generator both sides "
                "start from (PSNR stage; the GAN stage starts from config.init_from; a port "
                "reference always starts from the port's).", flag_values=fv)


def run(fv):
  from sfmnet_jax.parity import twin  # pylint: disable=g-import-not-at-top
  if not fv.output:
    raise cli.UsageError("twin needs --output (a folder)")
  kind, _, changes = fv.reference.partition(":")
  if kind not in ("release", "port") or (kind == "release" and changes):
    raise cli.UsageError(f"--reference is release or port:FIELD=VALUE[,...], not "
                         f"{fv.reference!r}")
  try:
    reference = twin.port_reference(changes.split(",") if changes else []) \
        if kind == "port" else None
    return twin.run(fv.config, fv.release_dir, fv.output, seeds=fv.seeds,
                    margin_db=fv.margin_db, release_python=fv.release_python,
                    reference=reference, init=fv.init)
  except twin.ConfigUnsupported as e:
    raise cli.UsageError(str(e)) from None
