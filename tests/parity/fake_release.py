"""A PyTorch-free stand-in for `release_side/twin_worker.py` that honours its exchange protocol
(JSON lines on stdin/stdout, arrays in .npz files): its "network" returns its input
(img_out = img_fre = lr_up), its loss is the release's PSNR-stage sum for that output, in
numpy, and its weights move by STEP_SIZE per step (every value, known in closed form). The
port's initial weights come from the port's own initialiser (release names); its gradients
are the plain model's (XLA's ops, `conv_impl="xla"`) at its weights. The step
numbered $FAKE_NONFINITE_STEP (if set) reports a non-finite total."""

import json
import os
import sys

import numpy as np

PROTOCOL_OUT, sys.stdout = sys.stdout, sys.stderr
STEP_SIZE = 1e-3


def loss_terms(lr_up, hr, fft_weight=0.01):
  """main_two.py's loss of the identity network: l1_out + w amplitude + w phase + l1_fre."""
  l1 = float(np.mean(np.abs(lr_up - hr)))
  f_sr = np.fft.rfft2(lr_up.astype(np.float64), axes=(1, 2))
  f_hr = np.fft.rfft2(hr.astype(np.float64), axes=(1, 2))
  amp = float(np.mean(np.abs(np.abs(f_sr) - np.abs(f_hr))))
  pha = float(np.mean(np.abs(np.angle(f_sr) - np.angle(f_hr))))
  terms = {"l1_out": l1, "l1_fre": l1, "amplitude": amp, "phase": pha}
  return l1 + fft_weight * amp + fft_weight * pha + l1, terms


def plain_gradients(weights, width, num_resblocks, lr_up, hr):
  """(loss, {state_dict name: gradient}) of the PSNR-stage loss of the plain model at
  `weights` (release names)."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import SFMNet  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import losses  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.weights.release import params_to_state_dict, state_dict_to_params  # pylint: disable=g-import-not-at-top
  model = SFMNet(num_features=width, num_resblocks=num_resblocks)
  params = state_dict_to_params(
      {k[len("generator/"):]: v for k, v in weights.items() if k.startswith("generator/")}, model)

  def loss_fn(params):
    img_out, img_fre = model.apply({"params": params}, lr_up)
    return losses.reconstruction_losses(img_out, img_fre, hr)[0]

  loss, grads = jax.value_and_grad(loss_fn)(params)
  return float(loss), params_to_state_dict(grads)


def main():
  weights, steps, width, num_resblocks = None, 0, None, None
  bad_step = int(os.environ.get("FAKE_NONFINITE_STEP", "-1"))
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    if msg["cmd"] == "init":
      from sfmnet_jax.model.generator import SFMNet, init_generator  # pylint: disable=g-import-not-at-top
      from sfmnet_jax.weights.release import params_to_state_dict  # pylint: disable=g-import-not-at-top
      width, num_resblocks = msg["width"], msg["num_resblocks"]
      model = SFMNet(num_features=width, num_resblocks=num_resblocks)
      if msg.get("generator"):  # as the release: a given generator replaces the init
        with np.load(msg["generator"]) as d:
          weights = {f"generator/{k}": d[k] for k in d.files}
      else:
        params = init_generator(model, msg["seed"])["params"]
        weights = {f"generator/{k}": v for k, v in params_to_state_dict(params).items()}
      steps = 0
      np.savez(msg["out"], **weights)
      answer = {"device": "fake", "torch": None}
    elif msg["cmd"] == "step":
      with np.load(msg["batch"]) as d:
        total, terms = loss_terms(d["lr_up"], d["hr"])
      if steps == bad_step:
        total = float("nan")
      answer = {"total": total, "terms": terms, "seconds": 0.001, "finite": bool(np.isfinite(total))}
      weights = {k: v + np.float32(STEP_SIZE) for k, v in weights.items()}
      steps += 1
    elif msg["cmd"] == "gradients":
      with np.load(msg["batch"]) as d:
        total, grads = plain_gradients(weights, width, num_resblocks, d["lr_up"], d["hr"])
      np.savez(msg["out"], **{f"generator/{k}": v for k, v in grads.items()})
      answer = {"total": total}
    elif msg["cmd"] == "weights":
      np.savez(msg["out"], **weights)
      answer = {}
    elif msg["cmd"] == "eval":
      with np.load(msg["batch"]) as d:
        np.savez(msg["out"], img_out=d["lr_up"], img_fre=d["lr_up"])
      answer = {}
    else:
      answer = {"error": f"unknown command {msg['cmd']}"}
    PROTOCOL_OUT.write(json.dumps(answer) + "\n")
    PROTOCOL_OUT.flush()


if __name__ == "__main__":
  main()
