"""Load and run lowbit artifacts with the TVM runtime only.

Importing this package imports none of lowbit's compiler (ir, frontend, passes, codegen) and no onnx; with
``TVM_USE_RUNTIME_LIB=1`` set before TVM is first imported, only ``libtvm_runtime`` is loaded.

>>> import lowbit.runtime
>>> m = lowbit.runtime.load("model.lbit")                      # doctest: +SKIP
>>> m.run({"image": x})["logits"]                              # doctest: +SKIP
"""
from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from ..errors import LowbitError
from .artifact import LIBRARY, read_artifact, sha256
from .host import enable_amx, missing_cpu_features, uses_amx

_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32", "i16": "int16",
           "i8": "int8", "u8": "uint8", "bool": "bool"}
_TMPDIRS: list[str] = []
_CUDA_BLOBS: dict[str, bytes] = {}


def _cleanup():
    for d in _TMPDIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def _np_dtype(name: str) -> np.dtype:
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(_DTYPES[name])
    except KeyError:
        raise LowbitError(f"the artifact uses dtype {name}, which this runtime cannot pass in or out") from None


def _enable_cuda(blobs: dict[str, bytes]) -> None:
    """Make TVM's CUDA module loader use the device code stored in the artifact instead of compiling."""
    import tvm
    import tvm_ffi

    _CUDA_BLOBS.update(blobs)
    libdir = os.path.dirname(tvm.__file__)
    for root in (libdir, os.path.join(libdir, "lib")):
        cand = os.path.join(root, "libtvm_runtime_cuda.so")
        if os.path.exists(cand):
            try:
                ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:  # typically libcuda.so.1: no NVIDIA driver on this machine
                raise LowbitError(f"the artifact is for CUDA, and TVM's CUDA runtime cannot load here ({e})") from None
            break

    def compile_callback(code, target=None):
        key = sha256(code.encode() if isinstance(code, str) else bytes(code))
        if key not in _CUDA_BLOBS:
            raise RuntimeError(f"the artifact holds no device code for CUDA source {key[:12]}")
        return bytearray(_CUDA_BLOBS[key])

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_callback, override=True)


def table_weight(spec: dict, members: dict) -> np.ndarray:
    """A weight the artifact stores as 4-bit indices into at most 16 i8 values (``manifest["table_weights"]``):
    two indices a byte, low nibble first, decoded to its i8 array."""
    try:
        data, shape = members[spec["member"]], tuple(int(d) for d in spec["shape"])
        values = np.asarray(spec["values"], np.int64)
    except (KeyError, TypeError, ValueError):
        raise LowbitError(f"the artifact's table weight {spec.get('member', '?')!r} is missing or malformed") from None
    n = int(np.prod(shape))
    b = np.frombuffer(data, np.uint8)
    if b.size != (n + 1) // 2 or not 1 <= values.size <= 16 or values.min() < -128 or values.max() > 127:
        raise LowbitError(f"the artifact's table weight {spec['member']!r} does not match its shape {list(shape)}")
    idx = np.empty(2 * b.size, np.uint8)
    idx[0::2], idx[1::2] = b & 15, b >> 4
    idx = idx[:n]
    if idx.size and int(idx.max()) >= values.size:
        raise LowbitError(f"the artifact's table weight {spec['member']!r} indexes past its {values.size} values")
    return values.astype(np.int8)[idx].reshape(shape)


class Module:
    """A loaded artifact: ``run`` maps input names to arrays and returns outputs by name."""

    def __init__(self, path, manifest: dict, lib, device, vm, weights: list | None = None):
        self.path, self.manifest, self._lib, self.device, self._vm = path, manifest, lib, device, vm
        self.inputs = manifest["inputs"]
        self.outputs = manifest["outputs"]
        self._weights = weights or []  # the table weights, decoded once, passed after the inputs

    def signature(self) -> str:
        return ", ".join(f"{i['name']}: {i['dtype']}[{'x'.join(map(str, i['shape']))}]" for i in self.inputs)

    def _prepare(self, inputs: dict):
        import tvm

        names = [i["name"] for i in self.inputs]
        missing = [n for n in names if n not in inputs]
        extra = sorted(set(inputs) - set(names))
        if missing or extra:
            what = f"missing input {missing[0]!r}" if missing else f"unknown input {extra[0]!r}"
            raise LowbitError(f"{what}; the model takes ({self.signature()})")
        args = []
        for spec in self.inputs:
            a = np.asarray(inputs[spec["name"]])
            want = _np_dtype(spec["dtype"])
            if a.shape != tuple(spec["shape"]) or a.dtype != want:
                raise LowbitError(f"input {spec['name']!r} is {a.dtype}[{'x'.join(map(str, a.shape))}], expected "
                                  f"{want}[{'x'.join(map(str, spec['shape']))}]; the model takes ({self.signature()})")
            args.append(tvm.runtime.tensor(np.asarray(a, order="C"), self.device))  # (ascontiguousarray makes 0-d 1-d)
        return args + self._weights

    def run(self, inputs: dict) -> dict:
        """Run once; ``inputs`` maps each input name to a numpy array of the manifest's shape and dtype."""
        out = self._vm["main"](*self._prepare(inputs))
        return {spec["name"]: o.numpy() for spec, o in zip(self.outputs, out)}

    def benchmark(self, inputs: dict | None = None, runs: int = 50, warmup: int = 5) -> dict:
        """Time ``runs`` calls after ``warmup`` (inputs already on the device); times in milliseconds."""
        if inputs is None:
            inputs = example_inputs(self.manifest)
        args = self._prepare(inputs)
        f = self._vm["main"]
        for _ in range(max(warmup, 0)):
            f(*args)
        self.device.sync()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            f(*args)
            self.device.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs,
                "times_ms": times}


def example_inputs(manifest: dict, seed: int = 0) -> dict:
    """Random inputs of the right shapes and dtypes (integers in [0, 100), floats standard normal)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in manifest["inputs"]:
        dt = _np_dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        if np.issubdtype(dt, np.floating):
            out[spec["name"]] = rng.normal(0, 1, shape).astype(dt)
        elif dt == np.bool_:
            out[spec["name"]] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[spec["name"]] = rng.integers(0, 100, shape).astype(dt)
    return out


def set_threads(n: int) -> None:
    """Use ``n`` worker threads in TVM's thread pool for later runs."""
    import tvm  # noqa: F401  (registers the runtime's global functions)
    import tvm_ffi

    os.environ["TVM_NUM_THREADS"] = str(n)
    tvm_ffi.get_global_func("runtime.config_threadpool")(1, n)


def load(path) -> Module:
    """Verify an artifact's hashes, then load its library with the TVM runtime."""
    manifest, members = read_artifact(path)
    target = manifest.get("target", {})
    kind = target.get("kind")
    if kind == "llvm":
        missing = missing_cpu_features(target)
        if missing:
            raise LowbitError(f"{path}: compiled for CPU '{target.get('mcpu')}', but this CPU lacks "
                              f"{', '.join(sorted(missing))}; recompile with --target auto")
        if uses_amx(target):
            enable_amx()
    elif kind != "cuda":
        raise LowbitError(f"{path}: artifact target kind {kind!r} is not supported by this runtime")
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if kind == "cuda":
        _enable_cuda({name.split("/", 1)[1].split(".")[0]: data for name, data in members.items()
                      if name.startswith("cuda/")})
        device = tvm.cuda(0)
        if not device.exist:
            raise LowbitError(f"{path}: the artifact is for CUDA, and no CUDA device is present")
    else:
        device = tvm.cpu(0)
    d = tempfile.mkdtemp(prefix="lowbit-")
    _TMPDIRS.append(d)
    lib_path = os.path.join(d, "model.so")
    with open(lib_path, "wb") as f:
        f.write(members[LIBRARY])
    try:
        weights = [table_weight(spec, members) for spec in manifest.get("table_weights", [])]
    except LowbitError as e:
        raise LowbitError(f"{path}: {e}") from None
    try:
        lib = tvm.runtime.load_module(lib_path)
        vm = VirtualMachine(lib, device)
    except Exception as e:
        raise LowbitError(f"{path}: the TVM runtime cannot load the library: {str(e).splitlines()[0]}") from None
    return Module(os.fspath(path), manifest, lib, device, vm, [tvm.runtime.tensor(w, device) for w in weights])


__all__ = ["load", "Module", "example_inputs", "set_threads"]
