"""lowbit.codegen.stack: TVMScript construction on a short-stack thread returns, raises and nests like a call."""
import threading

import pytest

from lowbit.codegen.stack import short_stack
from lowbit.errors import LowbitError


def test_result_and_thread():
    seen = []

    @short_stack
    def f(a, b=2):
        seen.append(threading.current_thread())
        return a + b

    assert f(1, b=5) == 6
    assert seen[0] is not threading.current_thread()


def test_exception_reaches_caller():
    @short_stack
    def f():
        raise LowbitError("no such op 'Foo'")

    with pytest.raises(LowbitError, match="no such op 'Foo'"):
        f()


def test_nested_calls_stay_on_the_worker():
    threads = []

    @short_stack
    def inner():
        threads.append(threading.current_thread())
        return 1

    @short_stack
    def outer():
        threads.append(threading.current_thread())
        return inner() + 1

    assert outer() == 2
    assert threads[0] is threads[1]


def test_prim_func_built_on_worker_matches_caller():
    import tvm
    from tvm.script import tirx as T

    def make(n):
        @T.prim_func(s_tir=True)
        def add(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
            for i in range(n):
                b[i] = a[i] + T.float32(1)
        return add

    tvm.ir.assert_structural_equal(short_stack(make)(8), make(8))
