"""The case contract: telemetry + ground truth + topology, and its validation."""

from llmrca.case.clean import constant_columns, fill_gaps
from llmrca.case.model import NORMAL, Case, FaultRecord, GroundTruth, Observation
from llmrca.case.schema import (
    LOG_COLUMNS,
    TIME,
    TRACE_COLUMNS,
    empty_logs,
    empty_traces,
    service_of,
    split_column,
)
from llmrca.case.topology import Topology
from llmrca.case.validation import Problem, check_case, errors_only, validate_case, validate_observation

__all__ = [
    "LOG_COLUMNS",
    "NORMAL",
    "TIME",
    "TRACE_COLUMNS",
    "Case",
    "FaultRecord",
    "GroundTruth",
    "Observation",
    "Problem",
    "Topology",
    "check_case",
    "constant_columns",
    "empty_logs",
    "empty_traces",
    "errors_only",
    "fill_gaps",
    "service_of",
    "split_column",
    "validate_case",
    "validate_observation",
]
