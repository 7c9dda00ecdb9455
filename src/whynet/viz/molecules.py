"""Molecules drawn with per-atom weights (RDKit SVG; needs the ``data`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def molecule_svg(
    smiles: str,
    atom_weights: Sequence[float],
    size: tuple[int, int] = (320, 240),
    mol: Any = None,
) -> str:
    """An SVG drawing of ``smiles`` with atoms highlighted by weight: red for positive, blue
    for negative weights, the strongest at full colour. ``mol`` (an RDKit molecule of
    ``smiles``, e.g. :func:`whynet.data.molecules.parse_smiles` with explicit H kept) fixes
    which atom each weight belongs to."""
    try:
        from rdkit import Chem
        from rdkit.Chem.Draw import rdMolDraw2D
    except ImportError as e:  # pragma: no cover - depends on extras
        raise ImportError("molecule drawing needs RDKit: pip install 'whynet[data]'") from e
    mol = Chem.MolFromSmiles(smiles) if mol is None else mol
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    w = [float(v) for v in atom_weights]
    if len(w) != mol.GetNumAtoms():
        raise ValueError(f"{len(w)} weights for {mol.GetNumAtoms()} atoms in {smiles!r}")
    if not all(np.isfinite(w)):
        raise ValueError("atom weights must be finite")
    top = max(max((abs(v) for v in w), default=0.0), 1e-12)
    colors = {}
    for i, v in enumerate(w):
        a = 0.8 * abs(v) / top
        if v > 0:
            colors[i] = (1.0, 1.0 - a, 1.0 - a)
        elif v < 0:
            colors[i] = (1.0 - a, 1.0 - 0.5 * a, 1.0)
    radii = {i: 0.3 + 0.25 * abs(w[i]) / top for i in colors}
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    drawer.DrawMolecule(
        mol,
        highlightAtoms=list(colors),
        highlightAtomColors=colors,
        highlightAtomRadii=radii,
        highlightBonds=[],
    )
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


def smiles_atom_weights(smiles: str, char_weights: Sequence[float]) -> np.ndarray:
    """Per-atom weights from per-character ones: each atom gets the mean weight of the
    characters that write it (``Cl`` two, a bracket atom ``[nH]`` with its brackets;
    :func:`whynet.data.molecules.atom_char_spans`); bonds, branches and ring-closure digits
    belong to no atom. Atom ``a`` is atom ``a`` of :func:`whynet.data.molecules.parse_smiles`."""
    from whynet.data.molecules import atom_token_mask

    w = np.asarray(char_weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != len(smiles):
        raise ValueError(
            f"{w.size} character weights for the {len(smiles)} characters of {smiles!r}"
        )
    m = atom_token_mask(smiles).numpy().astype(np.float64)
    return (m / m.sum(1, keepdims=True)) @ w


def smiles_svg(
    smiles: str, char_weights: Sequence[float], size: tuple[int, int] = (320, 240)
) -> str:
    """``smiles`` drawn with its atoms coloured by a per-character attribution (one weight per
    character of the string, as a character-level SMILES model's tokens; see
    :func:`smiles_atom_weights`)."""
    from whynet.data.molecules import parse_smiles

    mol = parse_smiles(smiles)
    return molecule_svg(smiles, smiles_atom_weights(smiles, char_weights).tolist(), size, mol=mol)
