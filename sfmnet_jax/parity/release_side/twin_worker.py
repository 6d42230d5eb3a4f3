"""The release's side of `sfmnet-benchmark twin`: run in a Python that has torch, beside a
checkout of the authors' repository (none of whose code is copied here).

  python twin_worker.py --release_dir=PATH/TO/SFMNet

It imports the release's own model code (`models/`: TwoBranch, the LightCNN
discriminators), its GAN loss (`loss/gan.py`) and the loss classes its training
scripts define (`AMPLoss`, `PhaLoss` of `main_two.py`, taken out by name with
`ast`: the scripts start training when imported), and trains as `main_two.py`
(PSNR stage) and `main_GAN.py` (GAN stage) do, one step per request.

Protocol: one JSON object per line on stdin, one answer per line on stdout
(everything the release prints goes to stderr); arrays travel as .npz files
whose paths are in the messages, NCHW float32 on this side.
  {"cmd": "init", "stage", "width", "num_resblocks", "seed", "fft_weight", "fftd_weight",
   "lr", "betas", "eps", "generator": npz|null, "vgg": npz|null, "out": npz}
      builds the networks (torch.manual_seed(seed) then the release's constructors),
      loads `generator` (a state_dict) if given, `vgg` (torchvision VGG19 features.*)
      for the GAN stage, and writes every network's initial state_dict to `out`
      (keys "generator/...", "d_spa/...", "d_fre/...").
  {"cmd": "step", "batch": npz with lr_up, hr (NHWC)}
      -> {"terms": {...}, "total": float, "seconds": float, "finite": bool}
      (`finite`: every term finite; the release steps its optimisers either way)
  {"cmd": "eval", "batch": npz with lr_up, "out": npz}  -> writes img_out, img_fre (NHWC)
  {"cmd": "weights", "out": npz}  -> writes every network's current state_dict, as init
  {"cmd": "gradients", "batch": npz with lr_up, hr (NHWC), "out": npz}
      -> {"total": float}; writes the PSNR-stage loss's gradient of every generator
      parameter at the current weights ("generator/<state_dict name>"), no step taken
  {"cmd": "quit"}
Numbers are computed where torch computes them (the CPU, or CUDA when present).
"""

import argparse
import ast
import json
import os
import sys
import time
import types

import numpy as np

PROTOCOL_OUT = sys.stdout
sys.stdout = sys.stderr  # the release's prints must not reach the protocol


def _release_losses(release_dir: str, torch, nn):
  """AMPLoss and PhaLoss as `main_two.py` defines them, without running the script."""
  path = os.path.join(release_dir, "main_two.py")
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  wanted = {"AMPLoss", "PhaLoss"}
  nodes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in wanted]
  if {n.name for n in nodes} != wanted:
    raise RuntimeError(f"{path}: AMPLoss / PhaLoss not found")
  namespace = {"torch": torch, "nn": nn}
  exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)  # pylint: disable=exec-used
  return namespace["AMPLoss"], namespace["PhaLoss"]


def _stub_torchvision():
  """`models/discriminator.py` imports torchvision for its VGG (pretrained weights, which
  the twin never downloads): a stand-in module lets the discriminators import."""
  if "torchvision" in sys.modules:
    return
  try:
    __import__("torchvision")
  except Exception:  # pylint: disable=broad-except  (missing, or broken beside this torch)
    stub = types.ModuleType("torchvision")
    stub.models = types.SimpleNamespace()
    sys.modules["torchvision"] = stub


def _vgg19_features(nn):
  """torchvision's VGG19 `features[0..34]` (conv/ReLU/max-pool, the release's
  VGGFeatureExtractor(feature_layer=34) without ImageNet normalisation)."""
  layers, c = [], 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
            512, 512, 512, 512):
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
      c = v
  return nn.Sequential(*layers[:35])  # children 0..34: conv5_4 without its ReLU


class Release:

  def __init__(self, release_dir):
    import torch  # pylint: disable=g-import-not-at-top
    import torch.nn as nn  # pylint: disable=g-import-not-at-top
    self.torch, self.nn = torch, nn
    sys.path.insert(0, os.path.abspath(release_dir))
    self.release_dir = release_dir
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.amp_cls, self.pha_cls = _release_losses(release_dir, torch, nn)

  def _tensor(self, a):
    return self.torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))).to(
        self.device)

  def init(self, msg):
    torch, nn = self.torch, self.nn
    import importlib  # pylint: disable=g-import-not-at-top
    self.stage, self.msg = msg["stage"], msg
    args = types.SimpleNamespace(num_features=msg["width"],
                                 base_num_every_group=msg.get("num_resblocks", 2),
                                 num_channels=3, act="PReLU", model="mynet", device=self.device)
    torch.manual_seed(msg["seed"])
    self.g = importlib.import_module("models.mynet").make_model(args).to(self.device)
    if msg.get("generator"):
      with np.load(msg["generator"]) as d:
        self.g.load_state_dict({k: torch.from_numpy(d[k]) for k in d.files})
    self.l1 = nn.L1Loss()
    self.amp, self.pha = self.amp_cls(), self.pha_cls()
    # main_two.py's and main_GAN.py's Adam: betas (0.9, 0.99), eps 1e-8 (the twin sends them).
    adam = dict(lr=msg["lr"], betas=tuple(msg.get("betas", (0.9, 0.99))), eps=msg.get("eps", 1e-8))
    self.opt = torch.optim.Adam(self.g.parameters(), **adam)
    nets = {"generator": self.g}
    if self.stage == "gan":
      _stub_torchvision()
      disc = importlib.import_module("models.discriminator")
      self.gan_loss = importlib.import_module("loss.gan").GANLoss().to(self.device)
      self.d_spa = disc.LightCNN_9Layers().to(self.device)
      self.d_fre = disc.LightCNN_9Layers_fft().to(self.device)
      self.vgg = _vgg19_features(nn)
      with np.load(msg["vgg"]) as d:
        self.vgg.load_state_dict({k[len("features."):]: torch.from_numpy(d[k])
                                  for k in d.files if k.startswith("features.")
                                  and int(k.split(".")[1]) <= 34})
      self.vgg = self.vgg.to(self.device).eval()
      for p in self.vgg.parameters():
        p.requires_grad = False
      self.opt_d = torch.optim.Adam(self.d_spa.parameters(), **adam)
      self.opt_df = torch.optim.Adam(self.d_fre.parameters(), **adam)
      nets.update(d_spa=self.d_spa, d_fre=self.d_fre)
    self.nets = nets
    self.weights({"out": msg["out"]})
    return {"device": self.device, "torch": torch.__version__}

  def weights(self, msg):
    np.savez(msg["out"], **{f"{name}/{k}": v.detach().cpu().numpy()
                            for name, net in self.nets.items()
                            for k, v in net.state_dict().items()})
    return {}

  def step(self, msg):
    with np.load(msg["batch"]) as d:
      lr_up, hr = self._tensor(d["lr_up"]), self._tensor(d["hr"])
    t0 = time.perf_counter()
    out = self._gan_step(lr_up, hr) if self.stage == "gan" else self._psnr_step(lr_up, hr)
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    out["finite"] = bool(np.isfinite(out["total"])
                         and all(np.isfinite(v) for v in out["terms"].values()))
    return out

  def gradients(self, msg):
    """The PSNR-stage loss's gradients at the current generator weights (no step)."""
    with np.load(msg["batch"]) as d:
      lr_up, hr = self._tensor(d["lr_up"]), self._tensor(d["hr"])
    self.g.train()
    self.g.zero_grad()
    loss, _ = self._reconstruction(self.g({"lr_up": lr_up}), hr)
    loss.backward()
    np.savez(msg["out"], **{f"generator/{name}": p.grad.detach().cpu().numpy()
                            for name, p in self.g.named_parameters() if p.grad is not None})
    self.g.zero_grad()
    return {"total": loss.item()}

  def _reconstruction(self, sr, hr):
    w = self.msg["fft_weight"]
    terms = {"l1_out": self.l1(sr["img_out"], hr), "l1_fre": self.l1(sr["img_fre"], hr),
             "amplitude": self.amp(sr["img_fre"], hr), "phase": self.pha(sr["img_fre"], hr)}
    # main_two.py's sum, in its order.
    total = terms["l1_out"] + w * terms["amplitude"] + w * terms["phase"] + terms["l1_fre"]
    return total, terms

  def _psnr_step(self, lr_up, hr):
    self.g.train()
    sr = self.g({"lr_up": lr_up})
    loss, terms = self._reconstruction(sr, hr)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    return {"total": loss.item(), "terms": {k: v.item() for k, v in terms.items()}}

  def _gan_step(self, lr_up, hr):
    """main_GAN.py's step: its detaches (perceptual features, D_fre's fake logits)."""
    self.g.train()
    sr = self.g({"lr_up": lr_up})
    l1_loss, terms = self._reconstruction(sr, hr)
    perceptual = self.l1(self.vgg(hr).detach(), self.vgg(sr["img_out"]).detach())
    adv_spa = self.gan_loss(self.d_spa(sr["img_out"]), True)
    adv_fre = self.gan_loss(self.d_fre(sr["img_out"]), True)
    fftd = self.msg["fftd_weight"]
    loss_g = 0.0005 * adv_spa + l1_loss + 0.1 * perceptual + fftd * adv_fre
    self.opt.zero_grad()
    loss_g.backward()
    self.opt.step()
    self.opt_d.zero_grad()
    self.opt_df.zero_grad()
    loss_d = (self.gan_loss(self.d_spa(hr), True)
              + self.gan_loss(self.d_spa(sr["img_out"].detach()), False))
    loss_d.backward()
    self.opt_d.step()
    fake = self.d_fre(sr["img_out"]).detach()
    loss_df = fftd * self.gan_loss(self.d_fre(hr), True) + fftd * self.gan_loss(fake, False)
    loss_df.backward()
    self.opt_df.step()
    terms.update(reconstruction=l1_loss, perceptual=perceptual, adv_spatial=adv_spa,
                 adv_frequency=adv_fre, d_spatial_loss=loss_d, d_frequency_loss=loss_df)
    return {"total": loss_g.item(), "terms": {k: v.item() for k, v in terms.items()}}

  def eval(self, msg):
    with np.load(msg["batch"]) as d:
      lr_up = self._tensor(d["lr_up"])
    self.g.eval()
    outs, fres = [], []
    with self.torch.no_grad():
      for i in range(0, len(lr_up), 8):
        sr = self.g({"lr_up": lr_up[i:i + 8]})
        outs.append(sr["img_out"].cpu().numpy().transpose(0, 2, 3, 1))
        fres.append(sr["img_fre"].cpu().numpy().transpose(0, 2, 3, 1))
    np.savez(msg["out"], img_out=np.concatenate(outs), img_fre=np.concatenate(fres))
    return {}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--release_dir", required=True)
  parser.add_argument("--threads", type=int, default=0)
  flags = parser.parse_args()
  release = Release(flags.release_dir)
  if flags.threads:
    release.torch.set_num_threads(flags.threads)
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    try:
      answer = getattr(release, msg["cmd"])(msg)
    except Exception as e:  # pylint: disable=broad-except  (the port reports it)
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      answer = {"error": f"{type(e).__name__}: {e}"}
    PROTOCOL_OUT.write(json.dumps(answer) + "\n")
    PROTOCOL_OUT.flush()


if __name__ == "__main__":
  main()
