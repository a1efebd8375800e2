"""Progress that reads well both on a terminal and in a log file.

On a terminal, :func:`progress` is a tqdm bar.  When stderr is not a terminal (output redirected to a file, a batch
job, a pipe), a bar would write thousands of carriage-return fragments; instead :class:`LineProgress` writes one
plain line every ``every`` percent (default 5) and one at the end::

    detect val: 251/1005 (25%) 4m03s elapsed, 0.97 s/img, ETA 12m10s

``DET_PROGRESS=bar|lines|off`` overrides the choice (``TQDM_DISABLE=1`` also turns both off).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

__all__ = ["progress", "LineProgress", "progress_mode", "format_seconds"]


def progress_mode(stream=None) -> str:
    """``bar`` on a terminal, ``lines`` otherwise; ``off`` when disabled by the environment."""
    mode = os.environ.get("DET_PROGRESS", "").strip().lower()
    if mode in ("bar", "lines", "off"):
        return mode
    if mode:
        raise ValueError(f"DET_PROGRESS={mode!r}: expected bar, lines or off")
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        return "off"
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # closed or exotic stream
        return "lines"


def format_seconds(s: float) -> str:
    """``7s``, ``4m03s``, ``2h05m``."""
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LineProgress:
    """The subset of tqdm's interface the project uses (iteration, ``update``, ``set_postfix``, ``close``, context
    manager), printing one line per ``every`` percent of ``total`` (or every ``interval`` seconds when the total is
    unknown) to ``file`` once ``min_seconds`` have passed, and a final line on close (unless ``leave=False``)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", every: float = 5.0, interval: float = 60.0, file=None, disable: bool = False,
                 leave: bool = True, min_seconds: float = 2.0, **_ignored) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.every, self.interval = every, interval
        self.file = file
        self.disable = disable
        self.leave, self.min_seconds = leave, min_seconds
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._next_pct = every
        self._last_print = self.start
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress: nothing to iterate (total-only progress; call update())")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        if now - self.start < self.min_seconds:  # a loop that is over in a blink needs no progress lines
            return
        if self.total:
            if 100.0 * self.n / self.total >= self._next_pct and self.n < self.total:
                self._emit(now)
                pct = 100.0 * self.n / self.total
                self._next_pct = (int(pct // self.every) + 1) * self.every
        elif now - self._last_print >= self.interval:
            self._emit(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.leave and self.total != 0:  # nothing to do: nothing to say
            self._emit(time.perf_counter(), final=True)

    def line(self, now: float | None = None, final: bool = False) -> str:
        now = time.perf_counter() if now is None else now
        el = now - self.start
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            s = f"{head}{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%) {format_seconds(el)} elapsed"
        else:
            s = f"{head}{self.n} {self.unit} {format_seconds(el)} elapsed"
        if self.n:
            rate = el / self.n
            s += f", {rate:.2f} s/{self.unit}" if rate >= 0.1 else f", {1 / max(rate, 1e-9):.1f} {self.unit}/s"
            if self.total and not final and self.n < self.total:
                s += f", ETA {format_seconds(rate * (self.total - self.n))}"
        if final:
            s += " - done" if not self.total or self.n >= self.total else " - stopped"
        if self.postfix:
            s += f" [{self.postfix}]"
        return s

    def _emit(self, now: float, final: bool = False) -> None:
        self._last_print = now
        print(self.line(now, final), file=self.file or sys.stderr, flush=True)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, leave: bool = True, **kwargs):
    """A tqdm bar on a terminal, a :class:`LineProgress` otherwise (see the module docstring)."""
    mode = progress_mode(kwargs.get("file"))
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, **kwargs)
    kwargs.pop("position", None)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=disable or mode == "off", leave=leave,
                        **kwargs)
