"""The port as a twin's reference side: this package's PSNR-stage train step in another
numerical mode, behind the release worker's protocol (`worker.py`).

  python -m sfmnet_jax.parity.port_worker --set=model.conv_impl=xla [--set=FIELD=VALUE ...]

`sfmnet-benchmark twin --reference=port:model.conv_impl=xla` starts it: the port
then trains against itself in that mode, from the same weights on the same
batches, and the twin's report says how far two numerical modes of one code
part (which operation makes a difference, where the release is not needed).

It answers the messages `release_side/twin_worker.py` answers (`init`, `step`,
`eval`, `weights`, `gradients`, `quit`; arrays as .npz files, NHWC, weights
as release state_dicts) for the PSNR stage. `init` takes the twin's whole
config (`config`), applies the `--set` overrides and starts from `generator`
(a release state_dict) when the twin sends one, else from the port's own
initial weights for the config's seed (`model.init_variables`: the same on
every host and in every mode).
"""

import argparse
import ast
import json
import sys

import numpy as np

PROTOCOL_OUT, sys.stdout = sys.stdout, sys.stderr  # only answers reach the protocol
COMMANDS = ("init", "step", "eval", "weights", "gradients")


def overrides(pairs):
  """["model.conv_impl=xla", ...] -> {("model", "conv_impl"): "xla", ...} (values as Python
  literals where they parse, else strings)."""
  out = {}
  for pair in pairs:
    field, sep, text = pair.partition("=")
    if not sep or not field:
      raise ValueError(f"--set takes FIELD=VALUE, not {pair!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    out[tuple(field.split("."))] = value
  return out


def configure(config: dict, changes) -> "object":
  """The twin's config (a dict) as a ConfigDict with `changes` applied; an unknown field is a
  ValueError naming it."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(config)
  for path, value in changes.items():
    node = cfg
    for key in path[:-1]:
      node = node[key] if key in node else None
      if node is None:
        break
    if node is None or path[-1] not in node:
      raise ValueError(f"no config field {'.'.join(path)}")
    node[path[-1]] = value
  return cfg


class PortReference:
  """The port's train step in the worker's mode (the twin's `PortSide`), spoken to as the
  release worker is."""

  def __init__(self, changes):
    self.changes, self.side = changes, None

  def init(self, msg):
    import jax  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.parity.port_side import PortSide, port_initial_generator, release_networks  # pylint: disable=g-import-not-at-top
    if "config" not in msg:
      raise ValueError("init needs the twin's config (`config`)")
    cfg = configure(msg["config"], self.changes)
    if cfg.stage != "psnr":
      raise ValueError("the port as reference trains the PSNR stage only")
    if msg.get("generator"):  # the twin's chosen start (a release state_dict)
      with np.load(msg["generator"]) as d:
        start = {k: d[k] for k in d.files}
    else:
      start = port_initial_generator(cfg)
    initial = release_networks({f"generator/{k}": v for k, v in start.items()}, cfg)
    self.side = PortSide(cfg, initial)
    self.weights({"out": msg["out"]})
    return {"device": str(jax.devices()[0].device_kind), "torch": None,
            "mode": {".".join(k): v for k, v in self.changes.items()}}

  def step(self, msg):
    n = self.side.jax.local_device_count()
    with np.load(msg["batch"]) as d:  # (devices, batch per device, H, W, C), as train.py feeds
      batch = {k: d[k].reshape(n, -1, *d[k].shape[1:]) for k in ("lr_up", "hr")}
    out = self.side.step(batch)
    return {"total": out["total"], "terms": out["terms"], "seconds": out["seconds"],
            "finite": out["finite"]}

  def eval(self, msg):
    with np.load(msg["batch"]) as d:
      img_out, img_fre = self.side.outputs(d["lr_up"])
    np.savez(msg["out"], img_out=img_out, img_fre=img_fre)
    return {}

  def weights(self, msg):
    np.savez(msg["out"], **{f"generator/{k}": v for k, v in self._state_dict().items()})
    return {}

  def gradients(self, msg):
    with np.load(msg["batch"]) as d:
      batch = {k: d[k] for k in ("lr_up", "hr")}
    grads = self.side.gradients_at(self.side.networks()["generator"], batch)
    np.savez(msg["out"], **{f"generator/{k}": v for k, v in grads.items()})
    return {}

  def _state_dict(self):
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    from sfmnet_jax.weights.release import params_to_state_dict, release_loadable  # pylint: disable=g-import-not-at-top
    params = self.side.networks()["generator"]
    return release_loadable(params_to_state_dict(traverse_util.unflatten_dict(
        {tuple(k.split("/")): v for k, v in params.items()})))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a config override of this side (e.g. model.conv_impl=xla)")
  args = parser.parse_args(argv)
  worker = PortReference(overrides(args.set))
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    try:
      if msg["cmd"] not in COMMANDS:
        raise ValueError(f"unknown command {msg['cmd']!r}")
      answer = getattr(worker, msg["cmd"])(msg)
    except Exception as e:  # pylint: disable=broad-except  (reported to the twin, which stops)
      answer = {"error": f"{type(e).__name__}: {e}"}
    PROTOCOL_OUT.write(json.dumps(answer) + "\n")
    PROTOCOL_OUT.flush()


if __name__ == "__main__":
  main()
