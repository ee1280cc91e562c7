"""Batch explanations over folders and data sets: resumable, on this machine or a Ray cluster.

``run_job(JobSpec(model=..., methods=...), "photos/", "out/")`` explains every image into
``out/`` (maps, overlays, a results table and an index page); running it again skips what is
finished. The command line is ``salience batch``.
"""

from salience.runner.inputs import BatchItem, collect_inputs
from salience.runner.job import JobSummary, make_engine, run_job
from salience.runner.spec import DisplayOptions, JobSpec

__all__ = [
    "BatchItem",
    "DisplayOptions",
    "JobSpec",
    "JobSummary",
    "collect_inputs",
    "make_engine",
    "run_job",
]
