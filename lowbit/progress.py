"""Progress for slow steps: shown on a terminal (stderr), silent in pipes and files."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    @contextmanager
    def step(self, what: str):
        t0 = time.perf_counter()
        if self.enabled:
            self.stream.write(f"lowbit: {what}...")
            self.stream.flush()
        ok = False
        try:
            yield
            ok = True
        finally:
            if self.enabled:
                self.stream.write(f" {'done' if ok else 'failed'} ({time.perf_counter() - t0:.1f}s)\n")
                self.stream.flush()
