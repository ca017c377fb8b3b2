"""Start-up of lowbit's own processes (the console script, the RPC server)."""
from __future__ import annotations

import sys


class _TorchNotForTvm:
    """An import finder that refuses ``torch`` to TVM's packages only. tvm_ffi and tvm.relax import torch
    eagerly, if it is installed, for DLPack interop lowbit does not use; that is 1.5-4 s of every command's
    start-up. The refusal asks who imports: lowbit's torch frontend, xgboost and a user's code still get torch
    when they import it (before TVM or after)."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch" and not name.startswith("torch."):
            return None
        f = sys._getframe(1)
        while f is not None and f.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
            f = f.f_back
        importer = f.f_globals.get("__name__", "") if f is not None else ""
        if importer.startswith(("tvm_ffi", "tvm.")):
            raise ImportError("lowbit's own processes do not give torch to TVM")
        return None


def keep_torch_from_tvm() -> None:
    """Install :class:`_TorchNotForTvm` (once). Call it before TVM is imported, in a process lowbit owns."""
    if not any(isinstance(f, _TorchNotForTvm) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchNotForTvm())
