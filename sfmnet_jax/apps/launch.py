"""The console scripts of `pyproject.toml`: each prepares the process before JAX starts
(`sfmnet_jax.runtime.prepare_process`), then runs its tool.

  sfmnet-train, sfmnet-evaluate     train.py and evaluate.py (absl flags, configs/)
  sfmnet-infer                      super-resolve faces and whole photos (apps/infer.py)
  sfmnet-demo                       the local web demo (apps/web.py)
  sfmnet-datasets                   prepare datasets (apps/datasets.py)
  sfmnet-convert                    release weights -> Orbax checkpoint (weights/convert.py)
  sfmnet-benchmark                  benchmarks and checks (apps/benchmark/)
  sfmnet-export                     ONNX and SavedModel export (export/exporter.py)
"""

import importlib
import sys

from sfmnet_jax import runtime


def _run(module: str, uses_jax: bool = True):
  if uses_jax:
    runtime.prepare_process()  # may re-execute this process (CPU-only hosts)
  sys.exit(importlib.import_module(module).main())


def train():
  importlib.import_module("sfmnet_jax.apps.train").run()


def evaluate():
  importlib.import_module("sfmnet_jax.apps.evaluate").run()


def infer():
  # --model=FILE.onnx runs on onnxruntime: no JAX, so no process settings for it.
  _run("sfmnet_jax.apps.infer", uses_jax=not any(a.startswith("--model") for a in sys.argv))


def demo():
  _run("sfmnet_jax.apps.web")


def datasets():
  _run("sfmnet_jax.apps.datasets")


def convert():
  _run("sfmnet_jax.weights.convert")


def export():
  _run("sfmnet_jax.export.exporter")


def benchmark():
  _run("sfmnet_jax.apps.benchmark")
