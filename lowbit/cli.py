"""The ``lowbit`` console script.

Errors print one line, ``lowbit: error: ...``, and exit 1 (usage errors exit 2); ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from . import __version__
from .errors import LowbitError


def _shape_arg(text: str):
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=DIMS (like input_ids=1x128)") from None
    return name, shape


def _looks_like_ir(path: str) -> bool:
    if path.endswith(".onnx"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    text = head.lstrip()
    while text.startswith(b"//"):
        text = text.split(b"\n", 1)[1].lstrip() if b"\n" in text else b""
    return text.startswith(b"graph")


def load_any(path: str, shapes: dict | None = None):
    """Load IR text or an ONNX model from ``path`` (IR text is recognised by its leading ``graph``)."""
    from .ir import parse

    if os.path.isfile(path) and _looks_like_ir(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read(), source=path)
    from .frontend import load

    return load(path, shapes=shapes)


def _write_text(text: str, out: str | None) -> None:
    if out is None or out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise LowbitError(f"cannot write {out}: {e.strerror}") from None


SPLIT_MARKER = re.compile(r"^// -----\s*$", re.M)


def split_input(text: str) -> list[str]:
    """Cases of a ``// -----``-separated file, each padded with newlines so error line numbers stay true."""
    chunks, line = [], 0
    for part in SPLIT_MARKER.split(text):
        chunks.append("\n" * line + part)
        line += part.count("\n")
    return chunks


def cmd_opt(args) -> int:
    from .ir import parse
    from .passes import PassContext, parse_pipeline, run_pipeline

    pipeline = parse_pipeline(args.pipeline)  # a bad pipeline fails before any slow import
    ctx = PassContext(verify_each=not args.no_verify_each, print_after_all=args.print_after_all,
                      timing=args.timing, debug_rewrites=args.debug_rewrites)
    if args.split_input_file:
        try:
            with open(args.file, encoding="utf-8") as f:
                chunks = split_input(f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise LowbitError(f"{args.file}: cannot read IR text: {e}") from None
        graphs = [parse(c, source=args.file) for c in chunks]
    else:
        graphs = [load_any(args.file, dict(args.shape or []))]
    texts = [str(run_pipeline(g, pipeline, ctx)) for g in graphs]
    _write_text("// -----\n".join(texts), args.output)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="lowbit: a compiler for low-precision neural networks.")
    p.add_argument("--version", action="version", version=f"lowbit {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    o = sub.add_parser("opt", help="import a model (ONNX or IR text), run a pass pipeline, print IR text",
                       description="Print lowbit IR for an ONNX model or IR text, after an optional pass pipeline.")
    o.add_argument("file", help="an .onnx model or a file of lowbit IR text")
    o.add_argument("-p", "--pipeline", default="", help="pass pipeline text or preset, e.g. 'fold-constants,dce' or O2")
    o.add_argument("-o", "--output", help="write the IR here instead of stdout")
    o.add_argument("--shape", action="append", type=_shape_arg, metavar="NAME=DIMS",
                   help="bind a symbolic input shape, e.g. --shape input_ids=1x128 (repeatable)")
    o.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    o.add_argument("--timing", action="store_true", help="print per-pass wall time (stderr)")
    o.add_argument("--debug-rewrites", action="store_true", help="print why rewrite rules declined (stderr)")
    o.add_argument("--split-input-file", action="store_true",
                   help="treat '// -----' lines as separators between independent IR graphs")
    o.add_argument("--no-verify-each", action="store_true", help="skip verifying the graph after every pass")
    o.set_defaults(func=cmd_opt)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LowbitError as e:
        if args.debug:
            raise
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head); not an error
        return 0
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in lowbit: still one line unless --debug
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"lowbit: error: internal error ({type(e).__name__}: {msg}); rerun with --debug for a traceback",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
