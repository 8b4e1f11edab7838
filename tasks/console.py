"""What a user sees while a pipeline runs, in the terminal and in the Prefect UI.

Every line goes through the `r1flow` logger, which writes to the terminal (without breaking
progress bars) and to the log of the Prefect flow or task run it is emitted in, so the Prefect
UI shows each stage's start, finish and periodic training metrics. A stage's progress is a tqdm
bar (step/total, key metrics, ETA) when stderr is a terminal, and a plain line every 10 % or
`LINE_EVERY_S` seconds otherwise (CI logs, a Prefect worker).
"""
from __future__ import annotations

import logging
import sys
import time

LOGGER = logging.getLogger("r1flow")
LINE_EVERY_S = 60.0
POSTFIX_EVERY_S = 0.5  # the bar's metrics: reading them waits for a GPU's queued work, so not every step
# metrics worth a glance, in the order they are shown
KEY_METRICS = ("loss", "reward/mean", "accuracy", "kl", "tok/s", "tokens_per_s")


class _ConsoleHandler(logging.Handler):
    """Writes through tqdm so that an open progress bar is redrawn below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "console", True):
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup() -> None:
    """Attach the terminal and Prefect handlers to the `r1flow` logger (idempotent)."""
    if getattr(LOGGER, "_r1flow_ready", False):
        return
    from prefect.logging.handlers import APILogHandler

    console = _ConsoleHandler()
    console.setFormatter(logging.Formatter("%(asctime)s  %(message)s", datefmt="%H:%M:%S"))
    LOGGER.addHandler(console)
    LOGGER.addHandler(APILogHandler())  # sends only inside a flow/task run (see settings: WHEN_MISSING_FLOW)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    LOGGER._r1flow_ready = True
    quiet_libraries()


def quiet_libraries() -> None:
    """Library chatter that means nothing to a user: per-file progress bars and INFO lines."""
    from huggingface_hub.utils import disable_progress_bars  # not transformers: a cached run never imports it

    disable_progress_bars()  # "Loading weights", "Writing model shards": transformers reads this when imported
    # bitsandbytes on CPU warns that an optional kernels package is missing, then falls back to
    # its own kernel, which works (shared/ENVIRONMENT.md): nothing for a user to act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def say(message: str, *, console: bool = True, prefect: bool = True) -> None:
    """One line for the user: to the terminal and/or to the current Prefect run's log."""
    setup()
    LOGGER.info(message, extra={"console": console, "send_to_api": prefect})


def brief(metrics: dict, limit: int = 4) -> str:
    """The few metrics worth a glance, formatted compactly (e.g. 'loss 0.412  kl 0.003')."""
    shown = [(k, float(metrics[k])) for k in KEY_METRICS if k in metrics][:limit]
    return "  ".join(f"{k} {v:.0f}" if abs(v) >= 1000 else f"{k} {v:.4g}" for k, v in shown)


def interactive() -> bool:
    return sys.stderr.isatty()


class StageReporter:
    """The progress display and metric lines of one stage (`label`)."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None
        self.phase = None
        self.started = self.last_line = time.monotonic()
        self.last_postfix = float("-inf")
        self.next_fraction = 0.1

    def progress(self, step: int, total: int, metrics: dict, phase: str = "train") -> None:
        if phase != self.phase:
            self._new_phase(phase, total)
        now = time.monotonic()
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(step - self.bar.n)
            if now - self.last_postfix >= POSTFIX_EVERY_S or step == total:
                self.last_postfix = now
                text = brief(metrics)
                if text:
                    self.bar.set_postfix_str(text, refresh=False)
            return
        fraction = step / max(total, 1)
        if fraction >= self.next_fraction or now - self.last_line >= LINE_EVERY_S or step == total:
            self.last_line, self.next_fraction = now, fraction + 0.1
            eta = (now - self.started) * (total - step) / max(step, 1)
            name = self.label if phase == "train" else f"{self.label} · {phase}"
            say(f"  {name}  {step}/{total} ({fraction:.0%})  {brief(metrics)}  eta {_clock(eta)}".rstrip(),
                prefect=False)

    def log(self, metrics: dict, step: int) -> None:
        """Training metrics for the Prefect run log (the terminal shows them on the bar)."""
        text = brief(metrics, limit=6)
        if text:
            say(f"  {self.label} step {step}: {text}", console=False)

    def _new_phase(self, phase: str, total: int) -> None:
        self.close()
        self.phase, self.started, self.next_fraction = phase, time.monotonic(), 0.1
        if interactive():
            from tqdm import tqdm

            name = self.label if phase == "train" else f"{self.label} · {phase}"
            self.bar = tqdm(total=total, desc=f"  {name}", leave=False, file=sys.stderr, dynamic_ncols=True,
                            unit="it" if phase == "train" else "seq")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def summary_table(rows: list[dict]) -> str:
    """The end-of-run table: stage, cached?, wall time (with its evaluation), held-out accuracy ± s.e.,
    its gain over the model the stage started from ± the paired s.e. (points), the true preference
    rate (house rules) where it was measured, MLflow run."""
    rules = any(r.get("preference") is not None for r in rows)
    gains = any(r.get("gain") is not None for r in rows)
    header = ("stage", "status", "wall", "held-out accuracy", *(("gain (paired)",) if gains else ()),
              *(("house rules",) if rules else ()), "MLflow run")
    lines = [header]
    for r in rows:
        if r.get("evaluation_of"):
            continue  # shown on the row of the stage it evaluates (wall time included)
        cells = [_rate(r.get("accuracy"), r.get("accuracy_se"))]
        if gains:
            cells.append("" if r.get("gain") is None else
                         f"{100 * r['gain']:+.1f} ± {100 * (r.get('gain_se') or 0.0):.1f} over {r.get('gain_over')}")
        if rules:
            cells.append(_rate(r.get("preference"), r.get("preference_se")))
        lines.append((r["label"], r["status"], f"{r['seconds']:.1f} s", *cells, (r.get("run_id") or "")[:12]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(lines[0]), fmt(tuple("-" * w for w in widths)), *map(fmt, lines[1:])])


def _rate(value: float | None, se: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} % ± {100 * (se or 0.0):.1f}"
