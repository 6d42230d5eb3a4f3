"""`sfmnet-benchmark export`: the exported ONNX model on onnxruntime beside the JAX forward
(CPU plugin and exact mode) and the release's PyTorch, in one run.

For each width (random weights: speed does not depend on them) and batch size, at
128x128: seconds per forward of
  - onnxruntime (CPU execution provider, default threads) on the graph
    `sfmnet-export` writes (dynamic batch), in a child process without JAX or the
    CPU plugin's process settings, as `sfmnet-infer --model` runs,
  - the port's JAX forward with the CPU plugin (`conv_impl="auto"`) and in the
    exact mode (`conv_impl="xla"`),
  - the release's PyTorch forward (a child process; with --release_dir),
each the median of `repeats` calls after a warm-up, and with `rounds` > 1 the
median over rounds that take turns. Ratios: onnxruntime time / the port's
fastest JAX time (the deployment goal: at most 1.5), and release time /
onnxruntime time.
"""

import statistics

import numpy as np


# The child imports `sfmnet_jax.runtime` for its timer: no JAX, no process settings.
ONNX_CHILD = """
import json, statistics, sys
import numpy as np, onnxruntime as ort
from sfmnet_jax.runtime import time_calls
path, batches, repeats = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
out = {}
for b in batches:
  x = np.random.default_rng(0).random((b, 128, 128, 3), np.float32)
  times = time_calls(lambda: session.run(None, {"lr_up": x}), repeats, sync=lambda _: None)
  out[b] = statistics.median(times)
assert "jax" not in sys.modules
print(json.dumps(out))
"""


def time_onnx(model, params, batch_sizes, repeats):
  """onnxruntime on the exported graph, in a child process started as a deployment starts
  it: no JAX in the process and none of the CPU plugin's process settings (its LD_PRELOAD
  allocator, glibc tunables)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.export import onnx_model  # pylint: disable=g-import-not-at-top
  proto = onnx_model.sfmnet_to_onnx(model, {"params": params})
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "sfmnet.onnx")
    with open(path, "wb") as f:
      f.write(proto.SerializeToString())
    out = subprocess.run([sys.executable, "-c", ONNX_CHILD, path, json.dumps(list(batch_sizes)),
                          str(repeats)], env=env, capture_output=True, text=True, check=True)
  return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def time_jax(model, params, batch_sizes, repeats):
  from sfmnet_jax.benchmarks import model as bm  # pylint: disable=g-import-not-at-top
  return {b: bm.forward(model, params, b, (128, 128), repeats)["median_s"] for b in batch_sizes}


def run(release_dir, widths, batch_sizes=(1, 8), repeats=5, rounds=1):
  """Times every backend per width and batch size; returns rows and the machine."""
  import jax  # pylint: disable=g-import-not-at-top
  from sfmnet_jax import runtime  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.benchmarks import versus_release as release  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.cpu import accelerate  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.parity.checkout import load_release_generator  # pylint: disable=g-import-not-at-top
  from sfmnet_jax.model.generator import SFMNet, init_generator  # pylint: disable=g-import-not-at-top
  info = runtime.machine_info()
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
    info["onnxruntime"] = onnxruntime.__version__
  except ImportError:
    pass
  if release_dir:
    _, torch = load_release_generator(release_dir)  # fails early, with instructions
    info["torch"] = torch.__version__
  print(f"onnxruntime vs JAX vs the release on {info['cpu']} ({info['cpu_vector_extensions']})")
  rows = []
  for width in widths:
    plain = SFMNet(num_features=width)
    params = jax.tree_util.tree_map(np.asarray, init_generator(plain, 0)["params"])
    turns = []
    for _ in range(max(1, rounds)):
      turn = {"onnxruntime": time_onnx(plain, params, batch_sizes, repeats),
              "jax_plugin": time_jax(accelerate(plain, "auto"), params, batch_sizes, repeats),
              "jax_exact": time_jax(plain, params, batch_sizes, repeats)}
      if release_dir:
        timed = release.time_release_apart(release_dir, width, repeats, 0, train=False,
                                           batch_sizes=tuple(batch_sizes))
        turn["release"] = {b: timed[f"forward_b{b}"] for b in batch_sizes}
      turns.append(turn)
    for b in batch_sizes:
      row = {"width": width, "batch": b}
      for backend in turns[0]:
        row[f"{backend}_s"] = statistics.median(t[backend][b] for t in turns)
      row["onnx_vs_fastest_jax"] = statistics.median(
          t["onnxruntime"][b] / min(t["jax_plugin"][b], t["jax_exact"][b]) for t in turns)
      if release_dir:
        row["release_vs_onnx"] = statistics.median(t["release"][b] / t["onnxruntime"][b]
                                                   for t in turns)
      rows.append(row)
      print(f"  C={width:<3d} batch {b}: onnxruntime {row['onnxruntime_s']:.3f} s, JAX plugin "
            f"{row['jax_plugin_s']:.3f} s, JAX exact {row['jax_exact_s']:.3f} s"
            + (f", release {row['release_s']:.3f} s" if release_dir else "")
            + f"; onnxruntime / fastest JAX {row['onnx_vs_fastest_jax']:.2f}"
            + (f", release / onnxruntime {row['release_vs_onnx']:.2f}" if release_dir else ""),
            flush=True)
  return {"benchmark": "export", "rows": rows, "machine": info, "repeats": repeats,
          "rounds": max(1, rounds)}
