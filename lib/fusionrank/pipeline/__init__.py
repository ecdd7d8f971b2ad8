"""The pipeline: the stage registry (flow order), the runner and the run records."""

from fusionrank.pipeline.registry import ORDER, STAGES
from fusionrank.pipeline.runlog import StageResult, read_stage_records
from fusionrank.pipeline.runner import job_main, preflight, run_all, run_stage

__all__ = ["ORDER", "STAGES", "StageResult", "job_main", "preflight", "read_stage_records", "run_all", "run_stage"]
