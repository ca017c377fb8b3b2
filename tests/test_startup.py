"""lowbit's own processes keep torch out of TVM's import (seconds of start-up) and nobody else's."""
import pytest

from lowbit._startup import _TorchNotForTvm


@pytest.mark.parametrize("importer", ["tvm_ffi._convert", "tvm.relax.base_py_module"])
def test_tvm_is_refused_torch(importer):
    g = {"__name__": importer, "finder": _TorchNotForTvm()}
    with pytest.raises(ImportError, match="do not give torch to TVM"):
        exec("finder.find_spec('torch')", g)
    with pytest.raises(ImportError):
        exec("finder.find_spec('torch.utils.dlpack')", g)


@pytest.mark.parametrize("importer", ["lowbit.frontend.torch_import", "xgboost.data", "__main__", "torch.nn"])
def test_everyone_else_gets_torch(importer):
    g = {"__name__": importer, "finder": _TorchNotForTvm()}
    exec("assert finder.find_spec('torch') is None", g)
    g = {"__name__": "tvm_ffi._convert", "finder": _TorchNotForTvm()}
    exec("assert finder.find_spec('tvmtorchish') is None and finder.find_spec('numpy') is None", g)


def test_the_console_script_installs_it_once():
    import sys

    from lowbit._startup import keep_torch_from_tvm

    before = list(sys.meta_path)
    try:
        keep_torch_from_tvm()
        keep_torch_from_tvm()
        assert sum(isinstance(f, _TorchNotForTvm) for f in sys.meta_path) == 1
    finally:
        sys.meta_path[:] = before
