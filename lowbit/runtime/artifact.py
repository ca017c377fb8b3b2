"""The artifact: one zip file (stored, not compressed) holding

- ``manifest.json``: format version, inputs/outputs (names, shapes, dtypes), target, resolved pipeline,
  lowbit and TVM versions, per-layer precision, and the sha256 of every other member;
- ``lib/model.so``: the compiled library (weights are constants inside it; nothing is pickled);
- ``cuda/<sha256>.fatbin``: device code for CUDA targets, keyed by the sha256 of its CUDA source.

The zip comment, the last bytes of the file, seals it: ``lowbit-sha256:`` and the sha256 of every byte
before it, so a flipped byte anywhere (member data, headers, central directory) is caught. The reader
checks the seal and every member hash before anything is loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

from ..errors import LowbitError

FORMAT = "lowbit-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "lib/model.so"
SEAL = b"lowbit-sha256:"
SEAL_LEN = len(SEAL) + 64


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: no half-written file, ever."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise LowbitError(f"cannot write {path}: {e.strerror or e}") from None


def write_artifact(path, manifest: dict, members: dict[str, bytes]) -> None:
    """Write atomically: a crash leaves no half-written artifact behind."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "members": {name: sha256(data) for name, data in sorted(members.items())}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in sorted(members.items()):
            z.writestr(name, data)
        z.comment = SEAL + b"0" * 64
    raw = bytearray(buf.getvalue())
    raw[-64:] = sha256(bytes(raw[:-SEAL_LEN])).encode()
    write_atomically(path, bytes(raw))


def read_artifact(path) -> tuple[dict, dict[str, bytes]]:
    """Read and verify an artifact; raise LowbitError naming what is wrong before anything is loaded."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LowbitError(f"{path}: no such artifact")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LowbitError(f"{path}: cannot read: {e.strerror}") from None
    bad = f"{path}: integrity check failed: the artifact is corrupt or was modified"
    if len(raw) < SEAL_LEN or raw[-SEAL_LEN:-64] != SEAL:
        if raw[:2] != b"PK":
            raise LowbitError(f"{path}: not a lowbit artifact")
        raise LowbitError(f"{bad} (its seal is missing)")
    if sha256(raw[:-SEAL_LEN]).encode() != raw[-64:]:
        raise LowbitError(f"{bad} (the file's sha256 differs from its seal)")
    try:
        z = zipfile.ZipFile(io.BytesIO(raw))
        names = z.namelist()
        if MANIFEST not in names:
            raise LowbitError(f"{path}: not a lowbit artifact (no {MANIFEST})")
        data = {n: z.read(n) for n in names}  # zipfile checks each member's CRC-32 here
    except LowbitError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, NotImplementedError) as e:
        raise LowbitError(f"{bad} ({e})") from None
    try:
        manifest = json.loads(data.pop(MANIFEST))
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise LowbitError(f"{path}: cannot read the manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise LowbitError(f"{path}: not a lowbit artifact (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise LowbitError(f"{path}: artifact format version {version} is not supported by this runtime "
                          f"(it reads version {FORMAT_VERSION}); recompile the model with this lowbit")
    members = manifest.get("members")
    if not isinstance(members, dict) or set(members) != set(data):
        raise LowbitError(f"{bad} (member list differs from the manifest)")
    for name, digest in members.items():
        if sha256(data[name]) != digest:
            raise LowbitError(f"{bad} (sha256 of {name} differs from the manifest)")
    return manifest, data


def kernel_summary(manifest: dict, ops=("conv2d", "conv_transpose2d", "matmul", "gemm", "qconv2d", "qmatmul",
                                        "qmatmul_dynamic", "conv2d_bf16", "matmul_bf16")) -> str:
    """The kernel families a compiled model's compute ops run on, from its manifest: ``qconv2d: vnni-nhwc 16,
    depthwise-nhwc 17; qmatmul: vnni 1`` (what every benchmark figure names beside the CPU)."""
    counts: dict = {}
    for k in manifest.get("kernels", []):
        if k["op"] in ops:
            fam = counts.setdefault(k["op"], {})
            fam[k["kernel"]] = fam.get(k["kernel"], 0) + 1
    return "; ".join(f"{op}: " + ", ".join(f"{name} {n}" for name, n in sorted(fam.items(), key=lambda x: -x[1]))
                     for op, fam in counts.items()) or "(no compute ops)"
