"""Step-score aggregation: one value for a partial solution from its per-step PRM scores.

Lightman et al. 2023 ("Let's Verify Step by Step", Sec. 2.6) score a solution by the product
of its step probabilities (the chance every step is right) and find min close behind; Snell
et al. 2024 ("Scaling LLM Test-Time Compute Optimally...", Sec. 5.1 / App. E) use the
prediction at the LAST step, which a PRM trained on Monte-Carlo rollouts makes a value
estimate of the whole prefix. Pure functions of a non-empty list of scores.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

StepAggregation = Callable[[Sequence[float]], float]


def agg_last(scores: Sequence[float]) -> float:
    """v = s_K."""
    return float(scores[-1])


def agg_min(scores: Sequence[float]) -> float:
    """v = min_k s_k: the weakest step bounds the solution."""
    return float(min(scores))


def agg_prod(scores: Sequence[float]) -> float:
    """v = prod_k s_k: P(every step correct) if the steps' errors were independent."""
    return float(math.prod(scores))


AGGREGATIONS: dict[str, StepAggregation] = {"last": agg_last, "min": agg_min, "prod": agg_prod}


def get_aggregation(name: str) -> StepAggregation:
    try:
        fn = AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"unknown step aggregation {name!r}; choose one of {sorted(AGGREGATIONS)}") from None

    def checked(scores: Sequence[float]) -> float:
        if len(scores) == 0:
            raise ValueError("step aggregation: expected at least one step score")
        return fn(scores)

    return checked
