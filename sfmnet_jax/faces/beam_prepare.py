"""`prepare` as an Apache Beam pipeline: the photos spread over a runner's workers.

  sfmnet-datasets prepare RAW_DIR OUT_DIR \
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"

The options follow TFDS's convention: Beam's command-line options without their
leading dashes, comma-separated (so no value may hold a comma). Each worker
loads the detector and landmark models once (`DoFn.setup`) and runs
`PhotoJob.decide` on its photos, the function the one-process run uses, so
the PNGs are the same bytes and the decisions the same. Every decision is
written as its own file as soon as it is made (`prepare.write_pending`); the
driver merges them into `prepare_log.json` when the pipeline ends, or the
next run does after an interruption. A photo that cannot be read or fails is
a decision ("unreadable" / "error", with its message), counted in the Beam
metrics `sfmnet_prepare/<status>`, and never fails a bundle.

RAW_DIR and OUT_DIR are read and written with ordinary file calls: on a cluster
they must be one shared file system mounted at the same path on every worker.
"""

import logging
from typing import List

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from sfmnet_jax.faces import prepare

NAMESPACE = "sfmnet_prepare"


def parse_options(text: str) -> PipelineOptions:
  """"runner=DirectRunner,direct_num_workers=2" -> PipelineOptions (TFDS's convention)."""
  flags = []
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    if item.startswith("-"):
      raise ValueError(f"beam_pipeline_options: write {item.lstrip('-')!r} without dashes "
                       "(comma-separated name=value pairs, as TFDS takes them)")
    flags.append("--" + item)
  options = PipelineOptions(flags)
  unknown = [f for f in options.get_all_options(retain_unknown_options=True)
             if f not in options.get_all_options()]
  if unknown:
    raise ValueError(f"beam_pipeline_options: unknown option(s) {unknown}")
  return options


class DecidePhoto(beam.DoFn):
  """Runs `PhotoJob.decide` on each photo name and keeps its decision as a pending file
  (nothing is emitted)."""

  def __init__(self, job: prepare.PhotoJob):
    super().__init__()
    self.job = job
    self.counters = {}

  def setup(self):
    self.job.load_models()

  def process(self, name: str):
    decision = self.job.decide(name)
    prepare.write_pending(self.job.out_dir, decision)
    status = decision["status"]
    if status not in self.counters:
      self.counters[status] = Metrics.counter(NAMESPACE, status)
    self.counters[status].inc()
    if status in ("unreadable", "error"):
      logging.warning("%s: %s (%s)", name, status, decision.get("error"))


def run(job: prepare.PhotoJob, names: List[str], options: str) -> None:
  """Decides `names` on the runner `options` names; the decisions are left as pending files
  (`prepare.write_pending`), which the caller merges into the log."""
  with beam.Pipeline(options=parse_options(options)) as pipeline:
    _ = (pipeline
         | "Photos" >> beam.Create(names)
         | "Spread" >> beam.Reshuffle()
         | "Decide" >> beam.ParDo(DecidePhoto(job)))
