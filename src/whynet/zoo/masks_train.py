"""Train (and sweep) the shipped explainer networks for whynet's zoo models.

Usage::

    python -m whynet.zoo.masks_train NAME [--sparsity S] [--deletion D] [--epochs E] [--n N]
        [--out DIR] [--file STEM]
    python -m whynet.zoo.masks_train NAME --sweep 0.1,0.3,1,3 [--json results.json]

NAME is one of :data:`TASKS`. Training writes ``NAME.safetensors`` (the explainer, see
:meth:`MaskExplainer.save`) and ``NAME.json`` (settings, data, timing and validation mask size /
fidelity) into ``whynet/zoo/weights/masks`` (``--file STEM`` writes ``STEM.*`` instead, e.g. a
second explainer trained with the deletion term next to the paper-loss one). A sweep trains one
explainer per sparsity on the same data and reports validation mask size against fidelity
(METHODS.md: always report the sweep).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from whynet.masks import ImageMaskNet, MaskExplainer, SequenceMaskNet
from whynet.masks.objective import objective_name
from whynet.zoo import load_model
from whynet.zoo.masks_pretrained import WEIGHTS_DIR

__all__ = ["TASKS", "Task", "load_task_data", "train_explainer", "sweep"]


@dataclass
class Task:
    """How the shipped explainer for one zoo model is trained."""

    model: str
    modality: str
    task: str
    sparsity: float
    epochs: int
    n_train: int
    n_val: int
    lr: float = 3e-3
    batch_size: int = 64
    fill: str = "blur"
    smoothness: float = 0.0
    deletion: float = 0.0  # weight of the deletion term (2); 0 = the paper's loss
    network: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "canvas-cnn": Task(
        "canvas-cnn",
        "image",
        "classification",
        sparsity=1.0,
        epochs=3,
        n_train=3000,  # as shipped
        n_val=500,
        smoothness=0.1,
        lr=1e-2,
        network={"width": 8, "depth": 3, "init_bias": 1.0},
    ),
    "fashion-cnn": Task(
        "fashion-cnn",
        "image",
        "classification",
        sparsity=1.0,
        epochs=3,
        n_train=6000,
        n_val=500,
        smoothness=0.1,
        lr=1e-2,
        network={"width": 8, "depth": 2, "init_bias": 1.0},
    ),
    "sentiment-gru": Task(
        "sentiment-gru",
        "sequence",
        "classification",
        sparsity=1.0,
        epochs=4,
        n_train=10000,
        n_val=1000,
        network={"hidden": 32},
    ),
    "solubility-smiles": Task(
        "solubility-smiles",
        "sequence",
        "regression",
        sparsity=0.3,
        epochs=30,
        n_train=1025,
        n_val=257,
        batch_size=32,
        network={"hidden": 32},
    ),
    "tpsa-smiles": Task(
        "tpsa-smiles",
        "sequence",
        "regression",
        sparsity=0.3,
        epochs=8,
        n_train=4000,
        n_val=500,
        batch_size=32,
        network={"hidden": 32},
    ),
}


def load_task_data(
    name: str,
    n_train: int | None = None,
    n_val: int | None = None,
    zoo_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` for task ``name`` from whynet's bundled data.

    Validation comes from the held-out split (the first ``n_val`` items), never from train.
    """
    spec = TASKS[name]
    n_train = spec.n_train if n_train is None else n_train
    n_val = spec.n_val if n_val is None else n_val
    if name == "canvas-cnn":
        from whynet.data.canvas import canvas

        x, y = canvas("train", n=n_train).tensors()
        xv, yv = canvas("test", n=n_val).tensors()
    elif name == "fashion-cnn":
        from whynet.data import fashion_mnist

        x, y = fashion_mnist("train").tensors()
        xv, yv = fashion_mnist("test").tensors()
    elif name == "sentiment-gru":
        from whynet.data.text import rotten_tomatoes

        vocab = load_model(name, weights_dir=zoo_dir)[1]["vocab"]
        x, y = rotten_tomatoes("train", vocab=vocab).tensors()
        xv, yv = rotten_tomatoes("test", vocab=vocab).tensors()
    elif name == "solubility-smiles":
        from whynet.data.molecules import solubility

        x, y = solubility("train").tensors()
        xv, yv = solubility("test").tensors()
    elif name == "tpsa-smiles":
        from whynet.data.molecules import nci_molecules

        x, y = nci_molecules("train").tensors()
        xv, yv = nci_molecules("test").tensors()
    else:  # pragma: no cover - TASKS and this switch list the same names
        raise KeyError(name)
    return x[:n_train], y[:n_train], xv[:n_val], yv[:n_val]


def _network(spec: Task, model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    if spec.modality == "image":
        return ImageMaskNet(in_channels=int(x.shape[1]), **spec.network)
    emb = model.embedding
    assert isinstance(emb, torch.nn.Embedding)
    return SequenceMaskNet(embed_dim=emb.embedding_dim, **spec.network)


def train_explainer(
    name: str,
    sparsity: float | None = None,
    epochs: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    zoo_dir: str | Path | None = None,
    deletion: float | None = None,
) -> tuple[MaskExplainer, dict[str, Any]]:
    """Fit the explainer for zoo model ``name``; returns it with a JSON-able record.

    ``deletion``: weight of the deletion term (:mod:`whynet.masks.objective`, default the
    task's, 0 = the paper's preservation-only loss).
    """
    spec = TASKS[name]
    model, info = load_model(spec.model, weights_dir=zoo_dir)
    x, y, xv, yv = load_task_data(name, n_train, n_val, zoo_dir)
    sparsity = spec.sparsity if sparsity is None else sparsity
    epochs = spec.epochs if epochs is None else epochs
    deletion = spec.deletion if deletion is None else deletion
    me = MaskExplainer(
        model,
        spec.modality,
        _network(spec, model, x),
        sparsity=sparsity,
        fill=spec.fill,
        smoothness=spec.smoothness,
        deletion=deletion,
        task=spec.task,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=seed,
        progress=progress,
    )
    t0 = time.perf_counter()
    me.fit(x, epochs=epochs, val_data=xv, patience=2)
    elapsed = time.perf_counter() - t0
    best = min(me.history_, key=lambda h: h["val_loss"])
    record = {
        "name": name,
        "model": spec.model,
        "modality": spec.modality,
        "task": spec.task,
        "model_sha256": info.get("meta", {}).get("sha256"),
        "sparsity": sparsity,
        "deletion": deletion,
        "objective": objective_name(deletion),
        "epochs_max": epochs,
        "epochs_run": len(me.history_),
        "n_train": len(x),
        "n_val": len(xv),
        "fill": spec.fill,
        "smoothness": spec.smoothness,
        "lr": spec.lr,
        "batch_size": spec.batch_size,
        "seed": seed,
        "network": me.network_.config,
        "params": sum(p.numel() for p in me.network_.parameters()),
        "val_mask_size": round(best["val_size"], 5),
        "val_fidelity": round(best["val_fidelity"], 5),
        "history": [{k: round(v, 5) for k, v in h.items()} for h in me.history_],
        "training_time_s": round(elapsed, 1),
        "trained_with": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "command": f"python -m whynet.zoo.masks_train {name} --sparsity {sparsity} "
        f"--deletion {deletion} --epochs {epochs} --n {len(x)}",
    }
    return me, record


def sweep(
    name: str,
    sparsities: list[float],
    epochs: int | None = None,
    n_train: int | None = None,
    progress: bool | None = None,
    zoo_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Validation mask size vs fidelity for each sparsity (same data, seed and epochs)."""
    rows = []
    for s in sparsities:
        _, rec = train_explainer(
            name, sparsity=s, epochs=epochs, n_train=n_train, progress=progress, zoo_dir=zoo_dir
        )
        rows.append(
            {
                k: rec[k]
                for k in (
                    "name",
                    "sparsity",
                    "val_mask_size",
                    "val_fidelity",
                    "epochs_run",
                    "n_train",
                    "n_val",
                    "training_time_s",
                )
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(TASKS))
    parser.add_argument("--sparsity", type=float, default=None)
    parser.add_argument("--deletion", type=float, default=None, help="deletion-term weight")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n", type=int, default=None, help="training examples")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(WEIGHTS_DIR))
    parser.add_argument("--file", default=None, help="file stem (default: NAME)")
    parser.add_argument("--sweep", default=None, help="comma-separated sparsities")
    parser.add_argument("--json", default=None, help="write sweep rows here")
    parser.add_argument("--zoo-dir", default=None, help="read the zoo model from here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        rows = sweep(
            args.name,
            [float(s) for s in args.sweep.split(",")],
            args.epochs,
            args.n,
            zoo_dir=args.zoo_dir,
        )
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        record_path = Path(args.out) / f"{args.name}.json"
        if record_path.is_file():  # keep the sweep beside the shipped explainer (the tour shows it)
            record = json.loads(record_path.read_text())
            record["sweep"] = rows
            record_path.write_text(json.dumps(record, indent=1) + "\n")
        return
    me, record = train_explainer(
        args.name,
        args.sparsity,
        args.epochs,
        args.n,
        zoo_dir=args.zoo_dir,
        deletion=args.deletion,
    )
    out, stem = Path(args.out), args.file or args.name
    if args.file:
        record["command"] += f" --file {stem}"
    me.save(out / f"{stem}.safetensors")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}), flush=True)


if __name__ == "__main__":
    main()
