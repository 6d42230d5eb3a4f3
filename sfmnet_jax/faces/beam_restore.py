"""`sfmnet-infer` as an Apache Beam pipeline: a folder of photos or crops over a runner's workers.

  sfmnet-infer --model=sfmnet.onnx --input=DIR --output=OUT \
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

Files -> Reshuffle -> RunInference with `RestoreModelHandler`, Beam's model
handler interface around `RestoreJob`: each worker loads the generator (an
ONNX file on onnxruntime, or a JAX checkpoint) and the face detector once
(`load_model`), and restores the batches Beam forms with `RestoreJob.run`,
the code of the one-process run, so the outputs are the same bytes (a face's
result does not depend on its batch-mates). Decisions are kept as pending files
as each batch finishes and merged into `infer_log.json` by the driver; Beam
metrics `sfmnet_infer/<status>` count them. Options: TFDS's convention, as
`sfmnet-datasets prepare` takes them. Input and output folders are ordinary
paths: on a cluster, one shared file system at the same path on every worker.
"""

import logging
import os
from typing import Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from sfmnet_jax.faces.beam_prepare import parse_options
from sfmnet_jax.faces.restore_job import RestoreJob

NAMESPACE = "sfmnet_infer"


class RestoreModelHandler(ModelHandler[str, PredictionResult, RestoreJob]):
  """RunInference's model: a loaded `RestoreJob`; an example is a file path, its inference
  the file's decision."""

  def __init__(self, job: RestoreJob, max_batch_size: int = 8):
    super().__init__()
    self.job = job
    self.max_batch_size = max_batch_size

  def load_model(self) -> RestoreJob:
    return self.job.load()

  def run_inference(self, batch: Sequence[str], model: RestoreJob,
                    inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
    by_file = {d["file"]: d for d in model.run(batch)}
    return [PredictionResult(path, by_file[os.path.basename(path)]) for path in batch]

  def batch_elements_kwargs(self):
    return {"min_batch_size": 1, "max_batch_size": self.max_batch_size}

  def get_num_bytes(self, batch: Sequence[str]) -> int:
    return sum(len(p) for p in batch)


class _Count(beam.DoFn):

  def __init__(self):
    super().__init__()
    self.counters = {}

  def process(self, result: PredictionResult):
    status = result.inference["status"]
    if status not in self.counters:
      self.counters[status] = Metrics.counter(NAMESPACE, status)
    self.counters[status].inc()
    if status in ("unreadable", "too_large", "error"):
      logging.warning("%s: %s (%s)", result.example, status, result.inference.get("error"))


def run(job: RestoreJob, paths: List[str], options: str) -> None:
  """Restores `paths` on the runner `options` names; the decisions are left as pending
  files (`restore_job.merge_log` gathers them)."""
  with beam.Pipeline(options=parse_options(options)) as pipeline:
    _ = (pipeline
         | "Files" >> beam.Create(paths)
         | "Spread" >> beam.Reshuffle()
         | "Restore" >> RunInference(RestoreModelHandler(job))
         | "Count" >> beam.ParDo(_Count()))

