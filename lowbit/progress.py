"""Progress for slow steps: shown on a terminal (stderr), silent in pipes and files."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

TICK_EVERY_S = 15.0  # off a terminal, a step's ticks are written at most this often, one line each


class Progress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._what = None
        self._last_tick = 0.0
        self._ticked = False

    @contextmanager
    def step(self, what: str):
        t0 = time.perf_counter()
        if self.enabled:
            self.stream.write(f"lowbit: {what}...")
            self.stream.flush()
        self._what, self._last_tick, self._ticked = what, t0, False
        ok = False
        try:
            yield
            ok = True
        finally:
            if self.enabled:
                if self._ticked and self._tty():  # the step's line holds a tick: write it again, plain
                    self.stream.write(f"\r\x1b[Klowbit: {what}...")
                self.stream.write(f" {'done' if ok else 'failed'} ({time.perf_counter() - t0:.1f}s)\n")
                self.stream.flush()
            self._what = None

    def tick(self, text: str) -> None:
        """Where a slow step stands (``text``, e.g. "quantize-weights: layer 40/211"): on a terminal the step's
        line is rewritten with it; in a file a line is added, at most every ``TICK_EVERY_S`` seconds."""
        if not self.enabled or self._what is None:
            return
        if self._tty():
            self.stream.write(f"\r\x1b[Klowbit: {self._what}... {text}")
        else:
            now = time.perf_counter()
            if now - self._last_tick < TICK_EVERY_S:
                return
            self._last_tick = now
            self.stream.write(f"\n  {text}")
        self._ticked = True
        self.stream.flush()

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())
