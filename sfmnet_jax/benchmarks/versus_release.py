"""`sfmnet-benchmark compare`: the authors' PyTorch release and this port, side by side.

Both run in the same process run on the same CPU, one after the other (with
--rounds, several times in turns), for each width: the generator's forward at
batch 1 and 8 (128x128) and the PSNR-stage training step at batch 8 (L1(out) +
L1(fre) + 0.01 (amplitude + phase) L1, Adam with betas (0.9, 0.99), as
`main_two.py` trains). Speed is reported as ratios (release time / port time:
above 1 means the port is faster), with the CPU model and its vector
extensions, because absolute times on shared machines vary by up to 2x.
"""

import os
import statistics
import types

from sfmnet_jax import runtime
from sfmnet_jax.parity.checkout import load_release_generator


def step_repeats(repeats: int) -> int:
  """Timed training steps per side: the same count for both, at least 3 (single steps vary
  by up to 50% on shared CPUs)."""
  return max(3, repeats)


def time_release(two_branch, torch, width, repeats, warmup_steps, train_batch=8,
                 batch_sizes=(1, 8), train=True, num_resblocks=2):
  args = types.SimpleNamespace(num_features=width, base_num_every_group=num_resblocks,
                               num_channels=3, act="PReLU")
  torch.manual_seed(0)
  device = "cuda" if torch.cuda.is_available() else "cpu"  # beside JAX on the same device
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  net = two_branch(args).to(device)
  out = {}
  with torch.no_grad():
    net.eval()
    for b in batch_sizes:
      x = torch.rand(b, 3, 128, 128, device=device)
      out[f"forward_b{b}"] = statistics.median(runtime.time_calls(
          lambda x=x: net({"lr_up": x}), repeats, sync=lambda _: sync()))
  out["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  if not train:
    return out
  net.train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
  l1 = torch.nn.L1Loss()
  lr_up = torch.rand(train_batch, 3, 128, 128, device=device)
  hr = torch.rand(train_batch, 3, 128, 128, device=device)

  def step():
    sr = net({"lr_up": lr_up})
    f_sr, f_hr = torch.fft.rfft2(sr["img_fre"]), torch.fft.rfft2(hr)
    loss = (l1(sr["img_out"], hr) + l1(sr["img_fre"], hr)
            + 0.01 * l1(torch.abs(f_sr), torch.abs(f_hr))
            + 0.01 * l1(torch.angle(f_sr), torch.angle(f_hr)))
    opt.zero_grad()
    loss.backward()
    opt.step()

  out[f"psnr_step_b{train_batch}"] = statistics.median(runtime.time_calls(
      step, step_repeats(repeats), warmup=warmup_steps, sync=lambda _: sync()))
  return out


def time_port(config, width, repeats, train_batch=8, batch_sizes=(1, 8), conv_algorithm="auto"):
  """The port's forward and PSNR step times of `config` at `width`; `conv_algorithm` is the
  kernels' algorithm, or "xla" for XLA's ops everywhere (model.conv_impl="xla")."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.benchmarks import model as bm  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import init_variables  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.training import state as training  # pylint: disable=g-import-not-at-top
  cfg = config.copy_and_resolve_references()
  cfg.stage, cfg.model.num_features = "psnr", width
  if conv_algorithm == "xla":
    cfg.model.conv_impl = "xla"
  else:
    cfg.model.conv_algorithm = conv_algorithm
  model = training.build_model(cfg)
  params = jax.device_put(init_variables(model, 0)["params"])
  out, compile_s = {}, {}
  for b in batch_sizes:
    row = bm.forward(model, params, b, (128, 128), repeats)
    out[row["name"]], compile_s[row["name"]] = row["median_s"], row["compile_s"]
  row = bm.train_step(cfg, train_batch, step_repeats(repeats))
  out[row["name"]], compile_s[row["name"]] = row["median_s"], row["compile_s"]
  return out, compile_s


def _release_child(release_dir, width, repeats, warmup_steps, queue, kwargs):
  two_branch, torch = load_release_generator(release_dir)
  queue.put(time_release(two_branch, torch, width, repeats, warmup_steps, **kwargs))


def time_release_apart(release_dir, width, repeats, warmup_steps, **kwargs):
  """`time_release` in a child process of this run: neither framework's threads or memory
  pools disturb the other's timings. `kwargs` go to `time_release`."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  ctx = multiprocessing.get_context("spawn")
  queue = ctx.Queue()
  child = ctx.Process(target=_release_child,
                      args=(release_dir, width, repeats, warmup_steps, queue, kwargs))
  child.start()
  result = queue.get()
  child.join()
  return result


def compare(release_dir, config, widths, repeats, conv_algorithms=("auto",), rounds=1):
  """Times both implementations per width; returns rows with seconds and ratios.

  The port is timed once per entry of `conv_algorithms` (its model.conv_algorithm, or
  "xla": XLA's ops everywhere).
  With `rounds` > 1 the release and the port take turns that many times per width
  (release, port, release, port...): each figure is the median over the rounds and
  the speed-up the median of the rounds' ratios, so that a machine whose speed
  drifts within the hour weighs on both sides alike.
  """
  from sfmnet_jax.benchmarks import model as benchmark_model  # pylint: disable=g-import-not-at-top
  _, torch = load_release_generator(release_dir)  # fails early, with instructions
  info = runtime.machine_info()
  info["torch"], info["torch_threads"] = torch.__version__, torch.get_num_threads()
  print(f"release (PyTorch {torch.__version__}, {torch.get_num_threads()} threads) vs sfmnet_jax "
        f"on {info['cpu']} ({os.cpu_count()} cores; {info['cpu_vector_extensions']})")
  rows = []
  for width in widths:
    for algorithm in conv_algorithms:
      turns = []  # (release, port, port compile seconds) per round
      for _ in range(max(1, rounds)):
        release = time_release_apart(release_dir, width, repeats, benchmark_model.WARMUP_STEPS,
                                     num_resblocks=config.model.num_resblocks)
        release_device = release.pop("device")
        port, compile_s = time_port(config, width, repeats, conv_algorithm=algorithm)
        turns.append((release, port, compile_s))
      for name in turns[0][0]:
        release_s = [t[0][name] for t in turns]
        port_s = [t[1][name] for t in turns]
        ratios = [r / p for r, p in zip(release_s, port_s)]
        row = {"release_device": release_device, "width": width, "what": name,
               "conv_algorithm": algorithm, "release_s": statistics.median(release_s),
               "port_s": statistics.median(port_s), "speedup": statistics.median(ratios),
               "port_compile_s": turns[0][2][name]}
        if len(turns) > 1:
          row.update(rounds_release_s=release_s, rounds_port_s=port_s, rounds_speedup=ratios)
        rows.append(row)
        each = (" (rounds: " + ", ".join(f"{r:.2f}x" for r in ratios) + ")"
                if len(turns) > 1 else "")
        print(f"  C={width:<3d} {name:<14s} release {row['release_s']:7.3f} s   sfmnet_jax "
              f"({algorithm}) {row['port_s']:7.3f} s   speed-up {row['speedup']:.2f}x{each}",
              flush=True)
  return {"benchmark": "compare", "rows": rows, "machine": info, "repeats": repeats,
          "rounds": max(1, rounds)}
