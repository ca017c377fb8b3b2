"""Run TVMScript construction on a thread with a short call stack.

TVMScript's ``T.prim_func`` calls ``inspect.stack()`` and ``T.macro`` calls ``inspect.getouterframes()`` to find
the variables a kernel's body closes over. Each outer frame costs an ``inspect.getmodule`` call, and for a frame
whose file is not a module's (``<frozen runpy>`` under ``python -m``, ``<string>`` in pytest-xdist workers, a
notebook cell) that call rescans every entry of ``sys.modules`` (about 2,000 with torch loaded). Deep callers
therefore pay for every kernel they build: int8 MobileNetV2 took 16.1 s to build from a pytest test and 8.5 s on a
fresh thread (AMD EPYC Zen 4). Only the frames *above* the constructing function are inspected, so a kernel's
captured variables — and therefore what is built — are the same on any thread.
"""
from __future__ import annotations

import functools
import threading

_state = threading.local()


def short_stack(fn):
    """``fn`` run on a fresh thread (re-entrant calls run in place); its result returned, its exception raised."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_state, "inside", False):
            return fn(*args, **kwargs)
        out: dict = {}

        def run():
            _state.inside = True
            try:
                out["value"] = fn(*args, **kwargs)
            except BaseException as e:  # re-raised on the caller's thread below
                out["error"] = e

        worker = threading.Thread(target=run, name=f"lowbit-{fn.__name__}", daemon=True)
        worker.start()
        worker.join()
        if "error" in out:
            raise out.pop("error")
        return out["value"]

    return wrapper
