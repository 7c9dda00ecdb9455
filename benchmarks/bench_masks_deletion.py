"""Explanatory masks with and without the deletion term (whynet.masks.objective, term (2)).

For each deletion weight x seed, trains the explainer of a zoo model with
:func:`whynet.zoo.masks_train.train_explainer` (the shipped tasks' settings; fewer molecules /
images and epochs so a run fits 2 shared cores, one torch thread) and scores it:

- ``tpsa``: tpsa-smiles on NCI test molecules 500.. (never used to validate: validation is test
  0..499): per-atom ROC AUC for "atom carries TPSA" and Spearman against RDKit's per-atom
  contributions (:func:`bench_masks.tpsa_ground_truth`, the same code as ``bench_masks.py
  --only tpsa``), fidelity 1 - MSE(masked, unmasked) / var(unmasked) and mean mask size.
- ``canvas``: canvas-cnn on held-out canvas test images 1000.. (:func:`bench_masks.canvas_heldout`):
  pointing game (exact item boxes), agreement of the prediction on the kept input (fidelity),
  the predicted class's probability on the complement (``removed_prob``, lower = the mask holds
  more of the evidence), deletion / insertion AUC (blur baseline, 32 steps) and mask size.

The shipped explainer (paper loss, trained longer) is scored on the same inputs as a reference
row. Usage::

    .venv/bin/python benchmarks/bench_masks_deletion.py --part tpsa --weights 0,1,3 \\
        --seeds 0,1 --n-train 1000 --epochs 3 --threads 1

Rows are appended to ``benchmarks/results/masks_deletion.json`` as each run ends (a rerun with
other settings adds rows; the same part/weight/sparsity/seed/n/epochs replaces its row).
``--save DIR`` keeps every trained explainer (``DIR/NAME-d{weight}-sp{sparsity}-s{seed}`` +
``.safetensors`` / ``.json``). ``--table`` prints a part's docs table from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_masks import canvas_heldout, tpsa_ground_truth  # noqa: E402
from whynet.zoo.masks_pretrained import load_pretrained  # noqa: E402
from whynet.zoo.masks_train import train_explainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "masks_deletion.json"
TASK = {"tpsa": "tpsa-smiles", "canvas": "canvas-cnn"}
TPSA_EVAL = (500, None)  # NCI test molecules after the 500 used for validation
CANVAS_IMAGES = 64


def score(part: str, me: Any, model: torch.nn.Module) -> dict[str, Any]:
    """The part's quality numbers for explainer ``me``."""
    t0 = time.perf_counter()
    if part == "tpsa":
        s = tpsa_ground_truth(me, model, *TPSA_EVAL)
        keys = ("auc_mask", "spearman_mask", "fidelity", "mask_mean_size", "auc_gradxemb")
        out = {k: round(s[k], 4) for k in keys}
        out["molecules"] = s["molecules"]
    else:
        from whynet.metrics import deletion_auc, insertion_auc, mask_fidelity, pointing_game

        x, _, boxes = canvas_heldout(CANVAS_IMAGES)
        m = me.explain(x).values.detach().double()
        fid = mask_fidelity(model, x, m, baseline="blur", blur_sigma=4.0)
        kw = {"baseline": "blur", "blur_sigma": 4.0, "steps": 32, "batch_size": 128}
        out = {
            "pointing_game": round(float(pointing_game(m, boxes).mean()), 4),
            "fidelity": round(float(fid.agreement.mean()), 4),
            "removed_prob": round(float(fid.removed.mean()), 4),
            "deletion_auc": round(float(deletion_auc(model, x, m, **kw).mean()), 4),
            "insertion_auc": round(float(insertion_auc(model, x, m, **kw).mean()), 4),
            "mask_mean_size": round(float(m.mean()), 4),
            "images": len(x),
        }
    out["score_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _order(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["part"], not r.get("shipped"), r["deletion"], r.get("sparsity", 0), r["seed"])


def write_row(path: Path, row: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    key = ("part", "deletion", "sparsity", "seed", "n_train", "epochs_max", "shipped")
    data["rows"] = [r for r in data["rows"] if any(r.get(k) != row.get(k) for k in key)]
    data["rows"].append(row)
    data["rows"].sort(key=_order)
    data["threads"] = torch.get_num_threads()
    data["torch"] = torch.__version__
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


COLUMNS = {
    "tpsa": ("auc_mask", "spearman_mask", "fidelity", "mask_mean_size"),
    "canvas": ("pointing_game", "fidelity", "removed_prob", "deletion_auc", "insertion_auc"),
}


def table(path: Path, part: str) -> str:
    """The docs table of ``part`` (markdown), generated from the JSON rows."""
    cols = COLUMNS[part] + ("mask_mean_size",) * (part == "canvas")
    head = ("explainer", "deletion", "sparsity", "seed", "train n x epochs", "train s", *cols)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(json.loads(path.read_text())["rows"], key=_order):
        if r["part"] != part:
            continue
        who = "shipped" if r.get("shipped") else "sweep"
        train = "" if r.get("shipped") else f"{r['n_train']} x {r['epochs_run']}"
        cells = [who, f"{r['deletion']:g}", f"{r.get('sparsity', '')}", str(r["seed"]), train]
        cells += [str(r.get("training_time_s", "")), *(f"{r[c]:.3f}" for c in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=sorted(TASK), required=True)
    parser.add_argument("--weights", default="0,1,3", help="deletion weights")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--sparsity", type=float, default=None, help="default: the task's")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shipped", action="store_true", help="also score the shipped one")
    parser.add_argument("--save", default=None, help="keep the trained explainers here")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="print the docs table, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.table:
        print(table(out, args.part))
        return
    name = TASK[args.part]
    if args.shipped:
        me, model, _ = load_pretrained(name)
        row = {"part": args.part, "shipped": True, "deletion": me.deletion, "seed": me.seed}
        row.update(score(args.part, me, model))
        print(json.dumps(row), flush=True)
        write_row(out, row)
    for w in (float(v) for v in args.weights.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            me, rec = train_explainer(
                name,
                sparsity=args.sparsity,
                epochs=args.epochs,
                n_train=args.n_train,
                seed=seed,
                progress=False,
                deletion=w,
            )
            row = {
                "part": args.part,
                "deletion": w,
                "seed": seed,
                "objective": rec["objective"],
                **{k: rec[k] for k in ("sparsity", "n_train", "n_val", "epochs_max")},
                "epochs_run": rec["epochs_run"],
                "val_fidelity": rec["val_fidelity"],
                "val_mask_size": rec["val_mask_size"],
                "training_time_s": rec["training_time_s"],
                "command": rec["command"],
            }
            row.update(score(args.part, me, me.model))
            print(json.dumps(row), flush=True)
            write_row(out, row)
            if args.save:
                stem = Path(args.save) / f"{name}-d{w:g}-sp{rec['sparsity']:g}-s{seed}"
                stem.parent.mkdir(parents=True, exist_ok=True)
                me.save(stem.with_suffix(".safetensors"))
                stem.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
