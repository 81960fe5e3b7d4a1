"""Progress of an audit: one bar per model on a terminal, log lines without one (CI, batch jobs).

On a terminal each model gets one tqdm bar (slices done, and its highest FNAF attack rate so far
across attacks). When standard error is not a terminal, a line is logged every ``every`` slices
(about a tenth of the audit) or every ``seconds``, whichever comes first: slices done, the
running rates, the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

__all__ = ["Progress", "map_progress"]

logger = logging.getLogger("mri_audit.audit.progress")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Progress of ``total`` slices audited for ``models``.

    Args:
        total: slices this process audits.
        models: model names (one bar or one rate each).
        enabled: show anything at all.
        stream: where the bars go (default standard error); a non-terminal gets log lines.
        seconds: the longest gap between two log lines.
    """

    def __init__(
        self,
        total: int,
        models: Sequence[str],
        *,
        enabled: bool = True,
        stream=None,
        seconds: float = 60.0,
    ) -> None:
        self.total, self.models = total, list(models)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bars = {}
        if self.enabled and is_tty:
            self.bars = {
                m: tqdm(
                    total=total,
                    desc=m,
                    unit="slice",
                    position=i,
                    leave=True,
                    file=self.stream,
                    dynamic_ncols=True,
                )
                for i, m in enumerate(self.models)
            }
        self.log_lines = self.enabled and not is_tty
        if self.log_lines and logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        self.every = max(1, total // 10)
        self.seconds = seconds
        self.done = 0
        self.started = self.last_time = time.monotonic()
        self.last_done = 0
        self.hits: dict[tuple[str, str], int] = {}
        self.seen: dict[tuple[str, str], int] = {}

    def update(self, slices: int, records: Sequence[dict] = ()) -> None:
        """``slices`` more slices done, with their records (FNAF hits are counted)."""
        for r in records:
            if r.get("kind", "fnaf") != "fnaf":
                continue
            key = (r["model"], r["attack"])
            self.seen[key] = self.seen.get(key, 0) + 1
            self.hits[key] = self.hits.get(key, 0) + bool(r.get("hit"))
        self.done += slices
        for m, bar in self.bars.items():
            bar.update(slices)
            worst = self._worst(m)
            if worst:
                bar.set_postfix_str(f"highest attack rate {worst}")
        now = time.monotonic()
        due = self.done - self.last_done >= self.every or now - self.last_time >= self.seconds
        if self.log_lines and (due or self.done >= self.total):
            self.last_done, self.last_time = self.done, now
            logger.info(self.line(now - self.started))

    def _worst(self, model: str) -> str:
        rates = [
            (self.hits[k] / self.seen[k], k[1]) for k in self.seen if k[0] == model and self.seen[k]
        ]
        if not rates:
            return ""
        rate, attack = max(rates)
        return f"{rate:.0%} ({attack})"

    def line(self, elapsed: float) -> str:
        """The log line: slices done, running rates, elapsed and remaining time."""
        share = self.done / self.total
        left = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        rates = "; ".join(f"{m} {self._worst(m)}" for m in self.models if self._worst(m))
        text = f"{self.done}/{self.total} slices ({share:.0%}), elapsed {_clock(elapsed)}"
        if self.done < self.total:
            text += f", about {_clock(left)} left"
        return text + (f"; highest attack rate so far: {rates}" if rates else "")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def map_progress(enabled: bool, stream=None):
    """The progress callback of a feature-recovery map: one line per batch of slices on
    standard error (``map: 3/24 slices, 97 s, about 680 s left``); None when not ``enabled``."""
    if not enabled:
        return None

    def show(done: int, total: int, seconds: float) -> None:
        left = seconds * (total - done) / done if done else 0.0
        tail = f", about {left:.0f} s left" if done < total else ""
        print(f"map: {done}/{total} slices, {seconds:.0f} s{tail}", file=stream or sys.stderr)

    return show
