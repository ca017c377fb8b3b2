"""Targets: parsing, features from mcpu and mattr, what the runtime requires, host CPU names by vendor."""
import json

import pytest

from lowbit import LowbitError
from lowbit.codegen import CodegenConfig, CudaTarget, Target, X86Target
from lowbit.runtime.host import MCPU_FLAGS, apply_mattr, host_mcpu, missing_cpu_features, required_features

SPR_FLAGS = MCPU_FLAGS["sapphirerapids"] | {"sse4_2"}
ZEN4_FLAGS = MCPU_FLAGS["znver4"] | {"sse4_2"}


def test_host_mcpu_by_features_and_vendor():
    assert host_mcpu(SPR_FLAGS, "GenuineIntel") == "sapphirerapids"
    assert host_mcpu(SPR_FLAGS - {"amx_int8"}, "GenuineIntel") == "cascadelake"  # AMX hidden by a hypervisor
    assert host_mcpu(ZEN4_FLAGS, "AuthenticAMD") == "znver4"  # not cascadelake: that turns off VBMI and BF16
    assert host_mcpu({"avx2", "fma"}, "AuthenticAMD") == "haswell"
    assert host_mcpu(set(), "GenuineIntel") == "x86-64"


def test_mattr_turns_features_and_their_dependents_off():
    assert "amx_int8" not in apply_mattr(MCPU_FLAGS["sapphirerapids"], ["-amx-int8"])
    no512 = apply_mattr(MCPU_FLAGS["sapphirerapids"], ["-avx512f"])
    assert not {"avx512_vnni", "avx512bw", "avx512_bf16"} & no512 and "avx2" in no512
    assert "avx_vnni" in apply_mattr(MCPU_FLAGS["haswell"], ["+avxvnni"])
    assert required_features({"mcpu": "sapphirerapids", "mattr": ["-amx-tile"]}).isdisjoint({"amx_int8", "amx_bf16"})


def test_target_parse_and_json_round_trip():
    t = Target.parse('{"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-int8"], "num-cores": 4}')
    assert isinstance(t, X86Target) and t.cores == 4 and t.vector_bytes == 64
    assert t.has("avx512_vnni") and not t.has("amx_int8")
    assert Target.parse(t.to_json()) == t and Target.parse(t) is t
    assert t.to_json() == {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 4, "mattr": ["-amx-int8"]}
    assert Target.parse({"kind": "llvm", "mcpu": "haswell", "num-cores": 1}).vector_bytes == 32
    c = Target.parse("cuda:sm_80")
    assert isinstance(c, CudaTarget) and c.arch == "sm_80" and c.has("tensor_cores")
    assert c.to_json()["host"]["kind"] == "llvm"


@pytest.mark.parametrize("spec,needle", [
    ("tpu", "unknown target 'tpu'"), ('["llvm"]', "must be an object"), ('{"kind": "metal"}', "kind 'metal'"),
    ('{"kind": "llvm", "mattr": "x"}', None), ('{"kind": "llvm", "mattr": [1]}', "mattr"),
    ('{"kind": "llvm", "num-cores": 0}', "num-cores")])
def test_bad_targets_are_named(spec, needle):
    if needle is None:  # a comma-separated mattr string is accepted as LLVM writes it
        assert Target.parse(spec).mattr == ("x",)
        return
    with pytest.raises(LowbitError, match=needle):
        Target.parse(spec)


def test_runtime_requires_what_the_target_may_use():
    spr_off = {"kind": "llvm", "mcpu": "sapphirerapids", "mattr": ["-amx-int8", "-amx-bf16", "-amx-tile"]}
    assert "amx_int8" not in required_features(spr_off)
    assert missing_cpu_features({"kind": "llvm", "mcpu": "no-such-cpu"}) == set()


def test_codegen_config_text_dict_and_errors():
    c = CodegenConfig.parse("tile=4,channel_blocks=(16,8),conv0:amx_tasks=8,conv0:tile=2")
    assert c.tile == 4 and c.channel_blocks == (16, 8) and c.knob("tile", "conv0") == 2 and c.knob("tile", "x") == 4
    assert CodegenConfig.parse(str(c)) == c
    assert CodegenConfig.parse(json.loads(json.dumps(c.as_dict()))) == c
    assert str(CodegenConfig()) == ""
    for text, needle in [("tile=0", "positive integer"), ("vm_exec_mode=jit", "compiled or bytecode"),
                         ("conv0:vm_exec_mode=bytecode", "whole model"), ("panel_columns=12", "multiple of 8"),
                         ("tile", "not key=value"), ("conv0:tile=-1", "positive integer")]:
        with pytest.raises(LowbitError, match=needle):
            CodegenConfig.parse(text)


def test_assumed_cpu_features(monkeypatch):
    """$LOWBIT_ASSUME_CPU_FEATURES adds flags a hypervisor hides: the host target gets them as mattr, and the
    runtime's feature check counts them."""
    from lowbit.codegen import Target
    from lowbit.runtime import host

    monkeypatch.setenv(host.ASSUME_ENV, "avx512_bf16, avx_vnni")
    t = Target.parse("auto")
    assert t.has("avx512_bf16") and t.has("avx_vnni")
    assert {"avx512_bf16", "avx_vnni"} <= host.cpu_flags()
    assert not host.missing_cpu_features(t.to_json())
    monkeypatch.delenv(host.ASSUME_ENV)
    assert host.assumed_flags() == set()


def test_host_caches_read_from_sysfs():
    import os

    from lowbit.runtime.host import host_caches

    if not os.path.isdir("/sys/devices/system/cpu/cpu0/cache/index0"):
        pytest.skip("no sysfs cache description here")
    c = host_caches()
    assert c.get("l1d", 0) > 0 and c.get("l2", 0) > c["l1d"]
