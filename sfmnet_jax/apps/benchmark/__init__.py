"""`sfmnet-benchmark COMMAND [flags]`: measurements that print numbers and write JSON.

Each command is a module of this package with its own usage text (its
docstring), its own flags (`define_flags(fv, argv)`) and `run(fv)`;
`sfmnet-benchmark COMMAND --help` prints both. Speed targets are checked
here, not in tests. Results go to benchmark_results/<name>.json, or --output.
"""

import importlib
import sys
import textwrap
from typing import List, Optional

from sfmnet_jax import cli

# name -> (module, the question it answers). The rooms they measure: benchmarks/ (speed
# here), parity/ (the release beside the port), accelerators/ (compiled for TPUs and GPUs),
# evaluation/faces.py (faces in photos).
COMMANDS = {
    "model": ("model", "generator and train-step speed here (latency, throughput, memory)"),
    "compare": ("compare", "the release's PyTorch beside the port, as speed ratios"),
    "input": ("input", "tf.data throughput of training batches"),
    "photo": ("photo", "the whole-photo pipeline on a 1-megapixel photo"),
    "profile": ("profile", "where one step's time goes, by op kind and block"),
    "prepare": ("prepare", "dataset preparation: one process against Apache Beam"),
    "export": ("export", "the ONNX export on onnxruntime beside JAX and the release"),
    "aot": ("aot", "a config compiled for a TPU or GPU that is not here: fit, cost, roofline"),
    "faces": ("faces", "face detection and restoration by face size, on composed photos"),
    "twin": ("twin", "the release and the port trained side by side, step for step"),
}
USAGE = "sfmnet-benchmark COMMAND [flags]   (sfmnet-benchmark COMMAND --help: its flags)"


def overview() -> str:
  width = max(map(len, COMMANDS))
  lines = [USAGE, "", "commands:"] + [f"  {name:<{width}}  {what}"
                                      for name, (_, what) in COMMANDS.items()]
  return "\n".join(lines + ["", textwrap.dedent(__doc__).strip()])


def command_module(name: str):
  """The module of command `name` (a cli.UsageError naming the commands if there is none)."""
  if name not in COMMANDS:
    raise cli.UsageError(f"unknown command {name!r}: one of {', '.join(COMMANDS)}")
  return importlib.import_module(f"sfmnet_jax.apps.benchmark.{COMMANDS[name][0]}")


def split_command(argv: List[str]):
  """(command name or None, the other arguments): the command is the first argument that is
  not a flag."""
  for i, arg in enumerate(argv):
    if not arg.startswith("-"):
      return arg, argv[:i] + argv[i + 1:]
  return None, list(argv)


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  name, rest = split_command(argv)
  if name is None:
    print(overview())
    return 0 if any(a in ("-h", "--help", "-help") for a in rest) else 2
  try:
    module = command_module(name)
  except cli.UsageError as e:
    print(f"sfmnet-benchmark: {e}\n(see sfmnet-benchmark --help)", file=sys.stderr)
    return 2
  prog = f"sfmnet-benchmark {name}"

  def run(fv, positional):
    if positional:
      raise cli.UsageError(f"unexpected arguments {positional}")
    try:
      module.run(fv)
    except getattr(module, "ERRORS", ()) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    return 0

  return cli.run(run, rest, lambda fv: module.define_flags(fv, [prog] + rest), module.__doc__,
                 prog)
