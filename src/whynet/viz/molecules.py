"""Molecules drawn with per-atom weights (RDKit SVG; needs the ``data`` extra)."""

from __future__ import annotations

from collections.abc import Sequence


def molecule_svg(
    smiles: str, atom_weights: Sequence[float], size: tuple[int, int] = (320, 240)
) -> str:
    """An SVG drawing of ``smiles`` with atoms highlighted by weight in [0, 1]."""
    try:
        from rdkit import Chem
        from rdkit.Chem.Draw import rdMolDraw2D
    except ImportError as e:  # pragma: no cover - depends on extras
        raise ImportError("molecule drawing needs RDKit: pip install 'whynet[data]'") from e
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    w = [float(v) for v in atom_weights]
    if len(w) != mol.GetNumAtoms():
        raise ValueError(f"{len(w)} weights for {mol.GetNumAtoms()} atoms in {smiles!r}")
    top = max(max(w, default=0.0), 1e-12)
    colors = {i: (1.0, 1.0 - 0.8 * v / top, 1.0 - 0.8 * v / top) for i, v in enumerate(w) if v > 0}
    radii = {i: 0.3 + 0.25 * v / top for i, v in enumerate(w) if v > 0}
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
