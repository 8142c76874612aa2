"""Progress a person can read: one display per step of a command, driven by (label, done, total) callbacks.

On a terminal each step is a tqdm bar with its count, items/s and ETA.  Elsewhere (a log file, CI, a notebook's
captured stderr) it is plain lines: one when the step starts, one every ``every`` seconds with the count, rate
and ETA, and one when it ends saying what was done in how long.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

_IMPORTED = time.time()

# the unit of a step, by the first word of its label
UNITS = {"mine": "images", "featurevis": "units", "maps": "units", "site": "layers", "verify": "layers",
         "probe": "lambdas", "train": "steps", "export": "units"}


def process_started() -> float:
    """time.time() at which this process started (Linux: from /proc; elsewhere: when this module was imported)."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Call it as ``progress(label, done, total)``; `step(label)` gives the (done, total) callback of one step."""

    def __init__(self, file: TextIO | None = None, every: float = 10.0, terminal: bool | None = None) -> None:
        self.file = file or sys.stderr
        self.every = every
        self.terminal = self.file.isatty() if terminal is None else terminal
        self.label: str | None = None
        self.bar = None

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if label != self.label:
            self.close()
            self.label, self.unit = label, UNITS.get(label.split()[0], "")
            self.t0 = self.last = now
            self.done = self.first = done
            self.total = total
            if self.terminal:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, desc=label, unit=f" {self.unit}" if self.unit else "it",
                                file=self.file, dynamic_ncols=True, leave=True)
            elif total > 1:
                self._line(f"{label}: {done}/{total} {self.unit}".rstrip())
        self.total = total
        if self.bar is not None:
            self.bar.update(done - self.done)
        elif now - self.last >= self.every and 0 < done < total:
            rate = (done - self.first) / max(now - self.t0, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            self._line(f"{label}: {done}/{total} {self.unit} ({100 * done / total:.0f}%), {rate:.1f} {self.unit}/s, "
                       f"ETA {_clock(eta) if eta != float('inf') else '?'}")
            self.last = now
        self.done = done
        if total and done >= total:
            self.close()

    def close(self) -> None:
        """End the current step (its final line: what was done in how long)."""
        if self.label is None:
            return
        took = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.close()
        else:
            n = self.done - self.first
            what = f"{self.done}/{self.total} {self.unit}" if self.total > 1 else "done"
            rate = f" ({n / took:.1f} {self.unit}/s)" if self.unit and n and took > 0 else ""
            self._line(f"{self.label}: {what} in {took:.1f} s{rate}")
        self.label, self.bar = None, None

    def step(self, label: str) -> Callable[[int, int], None]:
        return lambda done, total: self(label, done, total)

    def _line(self, text: str) -> None:
        print(text, file=self.file, flush=True)
