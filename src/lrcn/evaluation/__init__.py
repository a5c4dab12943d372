"""Evaluation: an evaluator per official metric (`evaluators`, what the engine fills while it
predicts) and the scoring of results files as users have them (`score`, `vizwiz`)."""

from lrcn.evaluation.evaluators import (
    EVALUATORS,
    ClevrEvaluator,
    DatasetEvaluator,
    Gather,
    VizWizEvaluator,
    VQAEvaluator,
    build_evaluator,
    metric_names,
)

__all__ = [
    "EVALUATORS", "ClevrEvaluator", "DatasetEvaluator", "Gather", "VQAEvaluator", "VizWizEvaluator",
    "build_evaluator", "metric_names",
]
