"""Pass manager, pipeline text, rewriter driver, and every pass's numerics on the zoo."""
import io

import numpy as np
import pytest

import lowbit
from lowbit.errors import LowbitError
from lowbit.passes import (PRESETS, Pass, PassContext, Pat, Any, Rule, apply_rules, parse_pipeline, register_pass,
                           registered_passes, resolve_pipeline)
from helpers import max_rel_err
import model_zoo as zoo


def test_every_registered_pass_round_trips_with_and_without_options():
    import dataclasses

    for name, cls in registered_passes().items():
        assert str(parse_pipeline(name)) == name
        for f in dataclasses.fields(cls):  # a non-default value of every option prints and parses back
            v = getattr(cls(), f.name)
            other = {bool: (not v) if isinstance(v, bool) else None, int: v + 1 if isinstance(v, int) else None}
            new = other.get(type(v))
            if new is None:
                continue
            text = str(cls(**{f.name: new}))
            assert text.startswith(name + "{") and str(parse_pipeline(text)) == text


@pytest.mark.parametrize("text", ["fold-constants,fold-batchnorm,canonicalize", "fold-constants{max_elements=64},dce",
                                  "canonicalize,canonicalize", ""])
def test_canonical_pipeline_text_round_trips(text):
    assert str(parse_pipeline(text)) == text


def test_presets_expand_to_text():
    assert resolve_pipeline("O2") == PRESETS["O2"]
    assert resolve_pipeline(" O1 , dce") == PRESETS["O1"] + ",dce"
    assert str(parse_pipeline("fold-constants{ max_elements = 8 }")) == "fold-constants{max_elements=8}"


@pytest.mark.parametrize("text,needle", [
    ("bogus", "unknown pass 'bogus'"),
    ("fold-constants{foo=1}", "has no option 'foo'"),
    ("fold-constants{max_elements=lots}", "cannot read 'lots' as int"),
    ("fold-constants{max_elements}", "needs a value"),
    ("dce{", "unbalanced"),
    ("dce,,", "cannot read"),
])
def test_pipeline_errors(text, needle):
    with pytest.raises(LowbitError, match=needle):
        parse_pipeline(text)


# small inputs: the numerics of a pass do not depend on the image size, and the golden tests pin its rewrites
SMALL = {"resnet18": lambda: zoo.resnet18(56), "mobilenet_v2": lambda: zoo.mobilenet_v2(56),
         "encoder": lambda: zoo.encoder(seq=32)}


def _zoo_graph(name):
    model, inputs = SMALL.get(name, zoo.ZOO[name])()
    shapes = {k: v.shape for k, v in inputs.items()} if name == "encoder" else None
    return lowbit.load(model, shapes=shapes), inputs


# quantize and to-bf16 change numerics by design: tests/test_quantize.py, tests/test_bf16.py
@pytest.mark.parametrize("pipeline", sorted(set(registered_passes())
                                            - {"quantize", "to-bf16", "quantize-weights", "shift-add", "sparsify"}) + ["O2"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_like", "encoder", "legacy_cnn", "qdq_cnn"])
def test_pass_keeps_zoo_numerics(name, pipeline):
    g, inputs = _zoo_graph(name)
    before = lowbit.interpret(g, inputs)
    after = lowbit.interpret(lowbit.run_passes(g, pipeline), inputs)
    for k in before:
        assert max_rel_err(after[k], before[k]) <= 1e-5, k


def test_o2_folds_every_batchnorm_of_the_cnns():
    for name in ("resnet18", "mobilenet_v2", "unet"):
        g, _ = _zoo_graph(name)
        ctx = PassContext()
        out = lowbit.run_passes(g, "O2", ctx)
        assert "batch_norm" not in out.op_counts(), name
        assert ctx.rule_hits["fold-bn-into-conv"] == g.op_counts()["batch_norm"]


def test_run_passes_does_not_modify_its_input():
    g, _ = _zoo_graph("legacy_cnn")
    text = str(g)
    lowbit.run_passes(g, "O2")
    assert str(g) == text


def test_context_instruments():
    g, _ = _zoo_graph("legacy_cnn")
    stream = io.StringIO()
    ctx = PassContext(print_after_all=True, timing=True, debug_rewrites=True, stream=stream)
    lowbit.run_passes(g, "canonicalize,dce", ctx)
    log = stream.getvalue()
    assert "// -----// IR after canonicalize //----- //" in log and "// -----// IR after dce //----- //" in log
    assert "// pass timing" in log and [n for n, _ in ctx.timings] == ["canonicalize", "dce"]
    assert "rule 'reshape-noop' declined at reshape" in log
    assert ctx.rule_hits["remove-dropout"] == 1


def test_verify_each_names_the_pass_that_broke_the_graph(monkeypatch):
    from lowbit.passes import base

    monkeypatch.setattr(base, "_PASSES", dict(base._PASSES))  # the broken pass must not outlive this test

    @register_pass
    class BreakTypes(Pass):
        name = "test-break-types"

        def run(self, graph, ctx):
            op = next(o for o in graph.ops if o.opname == "relu")
            op.results[0].type = op.results[0].type.with_shape((7,))

    g, _ = _zoo_graph("legacy_cnn")
    with pytest.raises(LowbitError, match=r"after pass 'test-break-types': the graph does not verify: relu 'Relu_\d+'"):
        lowbit.run_passes(g, "test-break-types")
    lowbit.run_passes(g, "test-break-types", PassContext(verify_each=False))  # unchecked when asked


def test_rewriter_counts_hits_and_reports_declines():
    g = lowbit.parse('graph @g(%x: tensor<4xf32>) {\n  %0 = neg(%x) : tensor<4xf32>\n  %1 = neg(%0) : tensor<4xf32>\n'
                     '  %2 = neg(%1) : tensor<4xf32>\n  %3 = abs(%2) : tensor<4xf32>\n  return %3 as "y", %0 as "z"\n}\n')
    rule = Rule("double-neg", Pat("neg", Pat("neg", Any("x"), bind="inner")), lambda gr, root, m: [m["x"]],
                check=lambda root, m: "inner is an output" if root.graph.is_output(m["inner"].result) else None)
    stream = io.StringIO()
    hits = apply_rules(g, [rule], PassContext(debug_rewrites=True, stream=stream))
    # neg(neg(x)) at %1 declines (its inner neg is an output); at %2 the pattern neg(neg(%0)) fires.
    assert hits == {"double-neg": 1}
    assert "rule 'double-neg' declined at neg: inner is an output" in stream.getvalue()
    assert g.op_counts() == {"neg": 1, "abs": 1}
