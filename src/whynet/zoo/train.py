"""Deterministic (seeded, CPU) training of whynet's reference models.

Usage: ``python -m whynet.zoo.train NAME [--out DIR]`` with NAME one of :data:`TRAINABLE`.
Writes ``NAME.safetensors`` and ``NAME.json`` (metrics, sha256, training time, hyperparameters,
vocabulary) into ``whynet/zoo/weights`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from whynet.core.explanation import atomic_write, file_sha256
from whynet.core.pipeline import predict_logits
from whynet.zoo._fitting import fit_sequences, shift_flip, train_classifier
from whynet.zoo.architectures import CanvasCNN, FashionCNN, SentimentGRU, SmilesRegressor

__all__ = ["train", "TRAINABLE", "save_weights"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_VERSION = 1
Result = tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any]]


def save_weights(model: nn.Module, meta: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """Save ``model``'s state dict as safetensors and ``meta`` (+ sha256) as JSON, atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda p: save_file(state, p, metadata={"name": name}))
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    meta["weights_file"] = weights.name
    meta["sha256"] = file_sha256(weights)
    meta["size_bytes"] = weights.stat().st_size
    write_meta(out / f"{name}.json", meta)
    return weights


def write_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Write a model's JSON metadata atomically (the one writer of zoo ``NAME.json`` files)."""

    def write(p: str) -> None:
        with open(p, "w") as fh:
            json.dump(meta, fh, indent=1, sort_keys=False)
            fh.write("\n")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def training_meta(
    name: str,
    task: str,
    model: nn.Module,
    metrics: dict[str, Any],
    hp: dict[str, Any],
    extra: dict[str, Any],
    elapsed: float,
    cpu: float,
    quick: bool,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The metadata every zoo training run records (metrics, times, settings, versions)."""
    return {
        "name": name,
        "task": task,
        "metrics": {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()},
        "training_time_s": round(elapsed, 1),
        "training_cpu_time_s": round(cpu, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "hyperparameters": hp,
        "trained_with": {
            "torch": torch.__version__,
            **(versions or {}),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "quick": quick,
        },
        **extra,
    }


_THREADS = [1]


def _seed(seed: int) -> None:
    """Seed the models' initialisation (training itself is seeded by the one training loop)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(_THREADS[0])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_logits(model, x, 1000).argmax(1) == y).float().mean())


def train_fashion_cnn(log: Callable[[str], None], quick: bool = False) -> Result:
    from whynet.data import fashion_mnist

    hp: dict[str, Any] = {
        "seed": 0,
        "epochs": 1 if quick else 5,
        "batch_size": 128,
        "lr": 4e-3,
        "weight_decay": 5e-4,
        "label_smoothing": 0.05,
        "optimizer": "AdamW + OneCycle",
        "augmentation": "random shift <= 2 px, horizontal flip",
        "widths": [24, 48, 96, 128],
    }
    _seed(hp["seed"])
    x, y = fashion_mnist("train").tensors()
    xt, yt = fashion_mnist("test").tensors()
    if quick:
        x, y = x[:2000], y[:2000]
    model = FashionCNN(tuple(hp["widths"]))
    train_classifier(model, x, y, hp, lambda b, g: shift_flip(b, g, 2, True), log)
    metrics = {
        "test_accuracy": _accuracy(model, xt, yt),
        "test_first1000_accuracy": _accuracy(model, xt[:1000], yt[:1000]),
        "train_accuracy": _accuracy(model, x, y),
    }
    return model, metrics, hp, {"class_names": fashion_mnist("test").class_names}


def train_canvas_cnn(log: Callable[[str], None], quick: bool = False) -> Result:
    from whynet.data import canvas

    hp: dict[str, Any] = {
        "seed": 0,
        "epochs": 1 if quick else 3,
        "batch_size": 128,
        "lr": 4e-3,
        "weight_decay": 5e-4,
        "label_smoothing": 0.05,
        "optimizer": "AdamW + OneCycle",
        "augmentation": "horizontal flip",
        "widths": [16, 32, 64, 128],
        "data": "canvas('train', size=64, n=30000, seed=0)",
    }
    _seed(hp["seed"])
    n = 2000 if quick else 30000
    t0 = time.time()
    x, y = canvas("train", size=64, n=n, seed=0).tensors()
    xt, yt = canvas("test", size=64, seed=0).tensors()
    log(f"canvas data generated in {time.time() - t0:.0f} s")
    model = CanvasCNN(tuple(hp["widths"]))
    train_classifier(model, x, y, hp, lambda b, g: shift_flip(b, g, 0, True), log)
    metrics = {
        "test_accuracy": _accuracy(model, xt, yt),
        "test_first1000_accuracy": _accuracy(model, xt[:1000], yt[:1000]),
        "train_accuracy": _accuracy(model, x[:10000], y[:10000]),
    }
    return model, metrics, hp, {"class_names": canvas("test", n=10).class_names}


def _seq_batch(ids: list[list[int]]) -> torch.Tensor:
    width = max(1, max(len(s) for s in ids))
    out = torch.zeros(len(ids), width, dtype=torch.long)
    for i, s in enumerate(ids):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _split_val(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(frac * n))
    return np.sort(perm[k:]), np.sort(perm[:k])


def train_sentiment_gru(log: Callable[[str], None], quick: bool = False) -> Result:
    from whynet.data.text import rotten_tomatoes

    hp: dict[str, Any] = {
        "seed": 0,
        "epochs": 1 if quick else 8,
        "batch_size": 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "embed_dim": 64,
        "hidden": 64,
        "dropout": 0.5,
        "clip": 5.0,
        "max_len": 64,
        "min_freq": 2,
        "val_fraction": 0.1,
        "optimizer": "AdamW + OneCycle",
        "selection": "best validation accuracy (10% of train held out)",
    }
    _seed(hp["seed"])
    train = rotten_tomatoes("train", max_len=hp["max_len"])
    test = rotten_tomatoes("test", vocab=train.vocab, max_len=hp["max_len"])
    tr, va = _split_val(len(train), hp["val_fraction"], hp["seed"])
    if quick:
        tr = tr[:1000]
    x, y = train.x[tr], train.y[tr]
    model = SentimentGRU(len(train.vocab), hp["embed_dim"], hp["hidden"], hp["dropout"])
    sel = fit_sequences(
        model,
        lambda e: (x, y),
        train.x[va],
        train.y[va],
        hp,
        F.cross_entropy,
        lambda p, t: float((p.argmax(1) == t).float().mean()),
        log,
    )
    metrics = {
        "test_accuracy": _accuracy(model, test.x, test.y),
        "test_first1000_accuracy": _accuracy(model, test.x[:1000], test.y[:1000]),
        "val_accuracy": sel["val_score"],
        "test_majority_baseline": float(max(test.y.float().mean(), 1 - test.y.float().mean())),
    }
    hp["best_epoch"] = sel["best_epoch"]
    return model, metrics, hp, {"class_names": train.class_names, "vocab": train.vocab.itos}


def _random_smiles(smiles: list[str], k: int, seed: int) -> list[list[str]]:
    from rdkit import Chem

    out = []
    for i, smi in enumerate(smiles):
        mol = Chem.MolFromSmiles(smi)
        out.append(list(Chem.MolToRandomSmilesVect(mol, k, randomSeed=seed + i)))
    return out


def _regression_metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred, y = pred.reshape(-1).double(), y.reshape(-1).double()
    ss_res = float(((pred - y) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "r2": 1.0 - ss_res / ss_tot,
        "rmse": math.sqrt(ss_res / len(y)),
        "mae": float((pred - y).abs().mean()),
    }


def _train_smiles(
    smiles: list[str],
    y: torch.Tensor,
    test_smiles: list[str],
    yt: torch.Tensor,
    hp: dict[str, Any],
    log: Callable[[str], None],
) -> Result:
    from whynet.data.molecules import encode_smiles, smiles_vocab

    _seed(hp["seed"])
    vocab = smiles_vocab()
    tr, va = _split_val(len(smiles), hp["val_fraction"], hp["seed"])
    tr_smiles = [smiles[i] for i in tr]
    variants = _random_smiles(tr_smiles, hp["random_smiles"], hp["seed"])
    ytr = y[tr].float()
    mean, std = float(ytr.mean()), float(ytr.std())
    model = SmilesRegressor(
        len(vocab), hp["embed_dim"], hp["channels"], hp["kernel"], hp["hidden"], hp["dropout"]
    )
    model.get_buffer("target_mean").fill_(mean)
    model.get_buffer("target_std").fill_(std)
    epoch_x = [encode_smiles(tr_smiles, vocab)] + [
        encode_smiles([v[j] for v in variants], vocab) for j in range(hp["random_smiles"])
    ]

    def sample(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return epoch_x[epoch % len(epoch_x)], ytr

    def loss_fn(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss((pred.reshape(-1) - mean) / std, (target - mean) / std)

    xv = encode_smiles([smiles[i] for i in va], vocab)
    sel = fit_sequences(
        model,
        sample,
        xv,
        y[va].float(),
        hp,
        loss_fn,
        lambda p, t: _regression_metrics(p, t)["r2"],
        log,
    )
    pred = predict_logits(model, encode_smiles(test_smiles, vocab), 512)
    m = _regression_metrics(pred, yt)
    first = _regression_metrics(pred[:200], yt[:200])
    metrics = {
        "test_r2": m["r2"],
        "test_rmse": m["rmse"],
        "test_mae": m["mae"],
        "test_first200_r2": first["r2"],
        "test_first200_rmse": first["rmse"],
        "val_r2": sel["val_score"],
        "target_mean": mean,
        "target_std": std,
    }
    hp["best_epoch"] = sel["best_epoch"]
    return model, metrics, hp, {"vocab": vocab.itos}


_SMILES_HP: dict[str, Any] = {
    "seed": 0,
    "batch_size": 32,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "embed_dim": 32,
    "channels": 64,
    "kernel": 5,
    "hidden": 64,
    "dropout": 0.1,
    "clip": 5.0,
    "val_fraction": 0.1,
    "random_smiles": 20,
    "optimizer": "AdamW + OneCycle",
    "augmentation": "epoch 0 canonical SMILES, epoch e uses RDKit random SMILES "
    "variant (e-1) mod 20 of each molecule",
    "selection": "best validation R^2 (10% of train held out)",
}


def train_solubility_smiles(log: Callable[[str], None], quick: bool = False) -> Result:
    from whynet.data.molecules import solubility

    hp: dict[str, Any] = dict(_SMILES_HP, epochs=2 if quick else 60, target="logS")
    train, test = solubility("train"), solubility("test")
    return _train_smiles(train.smiles, train.y, test.smiles, test.y, hp, log)


def train_tpsa_smiles(log: Callable[[str], None], quick: bool = False) -> Result:
    from whynet.data.molecules import nci_molecules

    hp: dict[str, Any] = dict(
        _SMILES_HP,
        epochs=2 if quick else 12,
        batch_size=64,
        target="TPSA",
        data="nci_molecules(split, max_len=120, seed=0, test_fraction=0.2)",
    )
    train, test = nci_molecules("train"), nci_molecules("test")
    return _train_smiles(train.smiles, train.y, test.smiles, test.y, hp, log)


TRAINERS: dict[str, Callable[..., Result]] = {
    "fashion-cnn": train_fashion_cnn,
    "canvas-cnn": train_canvas_cnn,
    "sentiment-gru": train_sentiment_gru,
    "solubility-smiles": train_solubility_smiles,
    "tpsa-smiles": train_tpsa_smiles,
}
TRAINABLE = sorted(TRAINERS)

TASKS = {
    "fashion-cnn": "classification",
    "canvas-cnn": "classification",
    "sentiment-gru": "classification",
    "solubility-smiles": "regression",
    "tpsa-smiles": "regression",
}


def train(
    name: str,
    out_dir: str | Path = WEIGHTS_DIR,
    quick: bool = False,
    log: Callable[[str], None] = print,
    threads: int = 1,
) -> dict[str, Any]:
    """Train model ``name`` from scratch (seeded, CPU) and save it; returns the JSON metadata."""
    if name not in TRAINERS:
        raise KeyError(f"unknown trainable model {name!r}; choose from {TRAINABLE}")
    _THREADS[0] = threads
    torch.set_num_threads(threads)
    t0, c0 = time.time(), time.process_time()
    model, metrics, hp, extra = TRAINERS[name](log=log, quick=quick)
    elapsed, cpu = time.time() - t0, time.process_time() - c0
    model.eval()
    meta = training_meta(name, TASKS[name], model, metrics, hp, extra, elapsed, cpu, quick)
    path = save_weights(model, meta, out_dir, name)
    log(f"{name}: {meta['metrics']} in {elapsed:.0f} s -> {path}")
    return json.loads((Path(out_dir) / f"{name}.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=TRAINABLE)
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (not for release)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    train(
        args.name,
        args.out,
        quick=args.quick,
        log=lambda s: print(s, flush=True),
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
