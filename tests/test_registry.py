"""Every registered op has a reference implementation, and every implementation a schema."""
from lowbit.ir import all_ops
from lowbit.ir.interp import implemented_ops


def test_every_op_has_a_reference():
    assert set(all_ops()) == set(implemented_ops())


def test_frontend_ops_all_map_to_registered_ops():
    from lowbit.frontend import CONVERTERS

    assert len(CONVERTERS) >= 80
