"""Weighted combination of reward functions that never lets a bad reward stop training.

Each reward is first called once on the whole batch. If that call raises, times out, or
returns something that is not one score per completion, the reward is called again per
sample (concurrently, sharing one more `timeout_s`), so a single bad sample only zeroes
itself. Non-finite scores zero just their own samples. Every zeroed sample is counted in
`RewardResult.failures` and each failing reward logs one warning per call.

Timeouts: every call runs in its own daemon thread and the caller waits on a
`concurrent.futures.Future` with a deadline. Python cannot kill a thread, so a timed-out
call keeps running (and using CPU) in the background until it returns on its own; its
result is discarded. Daemon threads are used instead of a ThreadPoolExecutor because the
executor's workers are joined at interpreter exit (a stuck reward would hang shutdown) and
a fixed-size pool would queue later calls behind stuck ones. Worst case, one reward holds
the caller for about 2 x `timeout_s` (batch call, then the per-sample retry).

Besides the registered rewards, a combiner can take injected reward callables by name
(`extra`, e.g. ``{"reward_model": score_with_rm}``): a stage builds them at run time (a
trained reward model is not a registry entry) and names them in its recipe like any other
reward; they get exactly the same weighting, timeouts and failure accounting.
"""
from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from components.rewards.functions import REWARDS, RewardFn, get_reward

logger = logging.getLogger(__name__)


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)  # bound by name on every call (e.g. max_length)


@dataclass
class RewardResult:
    total: list[float]  # weighted sum per completion
    components: dict[str, list[float]]  # per reward name, unweighted
    failures: dict[str, int]  # per reward name: samples that raised/timed out/were invalid (scored 0)


def _spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run fn in a fresh daemon thread; its outcome lands in the returned Future."""
    fut: Future = Future()
    fut.set_running_or_notify_cancel()

    def target() -> None:
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting caller
            fut.set_exception(exc)

    threading.Thread(target=target, daemon=True, name=f"reward-{getattr(fn, '__name__', 'fn')}").start()
    return fut


def _finite(x: Any) -> float | None:
    if isinstance(x, (str, bytes)) or x is None:
        return None
    try:
        value = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _as_list(out: Any, n: int) -> list | None:
    """`out` as a list if it is a sequence of exactly n items (list, tuple, array, tensor)."""
    if hasattr(out, "tolist") and not isinstance(out, (list, tuple)):
        try:
            out = out.tolist()
        except Exception:
            return None
    if not isinstance(out, (list, tuple)) or len(out) != n:
        return None
    return list(out)


def _describe(out: Any) -> str:
    try:
        return f"{type(out).__name__} of length {len(out)}"
    except Exception:
        return type(out).__name__


def _sample_columns(columns: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Columns restricted to sample i: per-completion sequences are sliced, the rest kept."""
    out = {}
    for key, value in columns.items():
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
            out[key] = value
            continue
        try:
            per_sample = len(value) == n
        except Exception:
            per_sample = False
        if not per_sample:
            out[key] = value
            continue
        try:
            out[key] = value[i : i + 1]
        except Exception:
            out[key] = [value[i]]
    return out


class RewardCombiner:
    """Score completions with several registered rewards and sum them with weights."""

    def __init__(self, specs: list[RewardSpec], timeout_s: float = 5.0,
                 extra: Mapping[str, RewardFn] | None = None):
        extra = dict(extra or {})
        shadowed = sorted(set(extra) & set(REWARDS))
        if shadowed:
            raise ValueError(f"injected reward(s) {shadowed} would shadow registered rewards; use other names")
        if not specs:
            raise ValueError("RewardCombiner needs at least one RewardSpec")
        try:
            timeout_s = float(timeout_s)
        except (TypeError, ValueError):
            raise ValueError(f"timeout_s must be a number, got {timeout_s!r}") from None
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be finite and > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.specs: list[RewardSpec] = []
        self._fns: list[RewardFn] = []
        seen: set[str] = set()
        for spec in specs:
            if spec.name not in REWARDS and spec.name not in extra:
                raise ValueError(
                    f"unknown reward {spec.name!r}; choices: {', '.join(sorted({*REWARDS, *extra}))}"
                )
            if spec.name in seen:
                raise ValueError(f"reward {spec.name!r} is listed twice")
            seen.add(spec.name)
            try:
                weight = float(spec.weight)
            except (TypeError, ValueError):
                raise ValueError(f"reward {spec.name!r}: weight must be a number, got {spec.weight!r}") from None
            if not math.isfinite(weight):
                raise ValueError(f"reward {spec.name!r}: weight must be finite, got {spec.weight!r}")
            kwargs = dict(spec.kwargs or {})
            fn = extra[spec.name] if spec.name in extra else get_reward(spec.name)
            self._check_kwargs(spec.name, fn, kwargs)
            self.specs.append(RewardSpec(spec.name, weight, kwargs))
            self._fns.append(fn)

    @classmethod
    def of(cls, items, timeout_s: float = 5.0, extra: Mapping[str, RewardFn] | None = None) -> "RewardCombiner":
        """The combiner of a recipe's reward list (items with ``name``, ``weight`` and ``kwargs``,
        e.g. `components.config.RewardItem`)."""
        return cls([RewardSpec(r.name, r.weight, dict(r.kwargs)) for r in items], timeout_s, extra=extra)

    @staticmethod
    def _check_kwargs(name: str, fn: RewardFn, kwargs: dict) -> None:
        """Bound kwargs must name explicit parameters, so a typo fails here, not silently."""
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            return
        named = {
            p.name
            for p in params.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "completions"
        }
        unknown = sorted(set(kwargs) - named)
        if unknown:
            raise ValueError(
                f"reward {name!r} has no parameter(s) {unknown}; parameters: {sorted(named)}"
            )
        check = getattr(fn, "check_kwargs", None)
        if check is not None:
            try:
                check(**kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"reward {name!r}: {exc}") from exc

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __call__(self, completions: list[str], **columns: Any) -> RewardResult:
        completions = list(completions)
        n = len(completions)
        total = [0.0] * n
        components: dict[str, list[float]] = {}
        failures: dict[str, int] = {}
        for spec, fn in zip(self.specs, self._fns):
            scores, failed = self._score(spec, fn, completions, columns)
            components[spec.name] = scores
            failures[spec.name] = failed
            for i, s in enumerate(scores):
                total[i] += spec.weight * s
        return RewardResult(total=total, components=components, failures=failures)

    # ------------------------------------------------------------------ internals

    def _score(
        self, spec: RewardSpec, fn: RewardFn, completions: list, columns: dict[str, Any]
    ) -> tuple[list[float], int]:
        n = len(completions)
        if n == 0:
            return [], 0
        call_kwargs = {**columns, **spec.kwargs}  # bound configuration wins over a same-named column
        error: str | None = None
        retry = False
        fut = _spawn(fn, completions, **call_kwargs)
        try:
            out = fut.result(timeout=self.timeout_s)
        except FutureTimeout:
            error, retry = f"timed out after {self.timeout_s:g}s (thread left running)", True
        except Exception as exc:
            error, retry = f"{type(exc).__name__}: {exc}", True
        else:
            values = _as_list(out, n)
            if values is None:
                error, retry = f"returned {_describe(out)} for {n} completions", True
            else:
                scores = [_finite(v) for v in values]
                bad = [i for i, s in enumerate(scores) if s is None]
                if bad:
                    error = f"non-finite or non-numeric score {values[bad[0]]!r} at sample {bad[0]}"
                self._warn(spec.name, len(bad), n, error)
                return [0.0 if s is None else s for s in scores], len(bad)

        if not retry or n == 1:  # a single-sample batch has nothing to retry
            self._warn(spec.name, n, n, error)
            return [0.0] * n, n

        # Per-sample fallback: all samples concurrently, sharing one deadline.
        futures = [
            _spawn(fn, [completions[i]], **{**_sample_columns(columns, i, n), **spec.kwargs})
            for i in range(n)
        ]
        deadline = time.monotonic() + self.timeout_s
        scores_out: list[float] = []
        failed = 0
        for i, f in enumerate(futures):
            try:
                out = f.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                out, err = None, f"timed out after {self.timeout_s:g}s (thread left running)"
            except Exception as exc:
                out, err = None, f"{type(exc).__name__}: {exc}"
            else:
                values = _as_list(out, 1)
                value = None if values is None else _finite(values[0])
                if value is not None:
                    scores_out.append(value)
                    continue
                err = (
                    f"returned {_describe(out)} for 1 completion"
                    if values is None
                    else f"non-finite or non-numeric score {values[0]!r}"
                )
            scores_out.append(0.0)
            failed += 1
            error = f"{error}; per-sample retry, e.g. sample {i}: {err}" if failed == 1 else error
        if failed:
            self._warn(spec.name, failed, n, error)
        else:
            logger.info("reward %r: batch call failed (%s); per-sample retry scored all %d", spec.name, error, n)
        return scores_out, failed

    @staticmethod
    def _warn(name: str, failed: int, n: int, error: str | None) -> None:
        if failed:
            logger.warning("reward %r: %d/%d samples scored 0: %s", name, failed, n, error)
