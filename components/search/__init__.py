"""Test-time search: strategies over injected policy/verifier callables, and adapters to real models."""
from .aggregate import AGGREGATIONS, get_aggregation
from .base import Candidate, Compute, Query, SearchConfig, SearchResult, Toolkit, total
from .compute_optimal import Arm, Plan, fit_compute_optimal, fit_plan
from .registry import STRATEGIES, get_strategy

__all__ = [
    "AGGREGATIONS", "Arm", "Candidate", "Compute", "Plan", "Query", "STRATEGIES", "SearchConfig", "SearchResult",
    "Toolkit", "fit_compute_optimal", "fit_plan", "get_aggregation", "get_strategy", "total",
]
