"""SMILES drawn with atoms coloured by a per-character attribution (issue 18): characters
mapped to atoms exactly, signs kept, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rdkit")

from whynet.viz import molecule_svg, smiles_atom_weights, smiles_svg  # noqa: E402
from whynet.viz.explanation import char_weights  # noqa: E402


def test_each_atom_gets_the_mean_weight_of_its_characters():
    # C C l ( = O ) [ n H ]  -> atoms C, Cl, O, [nH]... use a parseable molecule:
    smi = "ClC(=O)[NH3+]"
    w = np.arange(len(smi), dtype=float)  # weight = character index
    atoms = smiles_atom_weights(smi, w)
    # Cl = chars 0-1, C = 2, O = 5, [NH3+] = chars 7..12
    assert atoms.tolist() == [0.5, 2.0, 5.0, float(np.mean(range(7, 13)))]
    with pytest.raises(ValueError, match="3 character weights for the 13 characters"):
        smiles_atom_weights(smi, [1.0, 2.0, 3.0])


def test_smiles_svg_colours_positive_red_and_negative_blue():
    svg = smiles_svg("CCO", [1.0, 0.0, -1.0])
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    assert "#FF3333" in svg.upper()  # full red: 1 - 0.8
    assert "#3399FF" in svg.upper()  # full blue: (0.2, 0.6, 1.0)
    none = smiles_svg("CCO", [0.0, 0.0, 0.0])
    assert "#FF3333" not in none.upper() and "#3399FF" not in none.upper()
    with pytest.raises(ValueError, match="finite"):
        molecule_svg("CCO", [0.0, float("nan"), 1.0])


def test_char_weights_align_tokens_to_the_text():
    assert char_weights("CCO", list("CCO"), [1, 2, 3]) == [1.0, 2.0, 3.0]
    # atom-level tokens, a special token and a WordPiece piece
    assert char_weights("ClCO", ["[CLS]", "Cl", "C", "##O"], [9, 1, 2, 3]) == [1, 1, 2, 3]
    assert char_weights("CCO", ["x", "y"], [1, 2]) is None
