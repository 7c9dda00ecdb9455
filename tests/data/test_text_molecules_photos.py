"""Rotten-tomatoes text, molecules (solubility, NCI/TPSA) and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whynet.data import (
    Vocab,
    atom_char_spans,
    atom_token_mask,
    encode_smiles,
    parse_smiles,
    per_atom,
    photos,
    rotten_tomatoes,
    tokenize,
)


def test_tokenize():
    assert tokenize("It's GOOD, isn't it?") == ["it's", "good", ",", "isn't", "it", "?"]


def test_vocab_round_trip_and_special_ids():
    v = Vocab.build([["b", "a", "a"], ["c", "a", "b"]], min_freq=1)
    assert v.itos[:2] == ["<pad>", "<unk>"] and v.pad_id == 0 and v.unk_id == 1
    assert v.itos[2:] == ["a", "b", "c"]
    assert Vocab.from_json(v.to_json()) == v
    assert v.encode(["a", "zzz"]) == [2, 1]
    assert v.decode([2, 3, 0, 0]) == ["a", "b"]


def test_rotten_tomatoes_splits():
    train, test = rotten_tomatoes("train"), rotten_tomatoes("test")
    assert len(train) + len(test) == 12752
    assert set(train.texts).isdisjoint(test.texts)
    assert train.class_names == ["rotten", "fresh"]
    counts = torch.bincount(torch.cat([train.y, test.y])).tolist()
    assert counts[1] > counts[0] > 5000
    assert train.x.shape == (len(train), 64) and train.x.dtype == torch.int64
    # padding trails: no token after the first 0
    x = train.x
    assert bool(((x[:, 1:] != 0) <= (x[:, :-1] != 0)).all())
    assert test.vocab == train.vocab
    assert torch.equal(rotten_tomatoes("test").x, test.x)  # deterministic
    assert Vocab.from_json(train.vocab.to_json()) == train.vocab


SPAN_CASES = {
    "CCl": [(0, 0, 1), (1, 1, 3)],
    "c1ccccc1Br": [(0, 0, 1), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 6), (5, 6, 7), (6, 8, 10)],
    "[nH]1cccc1": [(0, 0, 4), (1, 5, 6), (2, 6, 7), (3, 7, 8), (4, 8, 9)],
    "O=C([O-])C%10CC%10": [(0, 0, 1), (1, 2, 3), (2, 4, 8), (3, 9, 10), (4, 13, 14), (5, 14, 15)],
    "[H]OC": [(0, 0, 3), (1, 3, 4), (2, 4, 5)],
}


@pytest.mark.parametrize("smiles", sorted(SPAN_CASES))
def test_atom_char_spans(smiles):
    pytest.importorskip("rdkit", reason="rdkit (whynet[data] extra) not installed")
    spans = atom_char_spans(smiles)
    assert spans == SPAN_CASES[smiles]
    assert parse_smiles(smiles).GetNumAtoms() == len(spans)
    m = atom_token_mask(smiles)
    assert m.shape == (len(spans), len(smiles))
    assert float(m.sum()) == sum(e - s for _, s, e in spans)
    np.testing.assert_allclose(per_atom(smiles, np.ones(len(smiles))), [e - s for _, s, e in spans])


def test_encode_smiles():
    x = encode_smiles(["CC", "c1ccccc1"])
    assert x.shape == (2, 8) and int(x[0, 2:].abs().sum()) == 0
    with pytest.raises(ValueError):
        encode_smiles(["CCCC"], max_len=2)


def test_solubility():
    pytest.importorskip("rdkit", reason="rdkit (whynet[data] extra) not installed")
    from whynet.data import solubility

    train, test = solubility("train"), solubility("test")
    assert (len(train), len(test)) == (1025, 257)
    assert train.y.dtype == torch.float32 and -12 < float(train.y.min()) < float(train.y.max()) < 3
    assert set(train.classes.tolist()) == {0, 1, 2}
    assert int((train.x == 1).sum()) == 0  # no unknown characters
    for smi in train.smiles[:100]:
        atom_char_spans(smi)
    # tokens decode back to the SMILES
    assert "".join(train.vocab.decode(train.x[0].tolist())) == train.smiles[0]


def test_nci_tpsa_contributions():
    pytest.importorskip("rdkit", reason="rdkit (whynet[data] extra) not installed")
    from rdkit.Chem import rdMolDescriptors

    from whynet.data import nci_molecules

    ds = nci_molecules()
    assert 4900 < len(ds) <= 4999
    tr, te = nci_molecules("train"), nci_molecules("test")
    assert len(tr) + len(te) == len(ds)
    assert sorted(tr.ids + te.ids) == sorted(ds.ids)
    for i in range(0, len(ds), 500):
        c = ds.atom_contribs[i]
        mol = parse_smiles(ds.smiles[i])
        assert len(c) == mol.GetNumAtoms() == len(atom_char_spans(ds.smiles[i]))
        assert abs(float(c.sum()) - float(ds.y[i])) < 1e-3
        assert abs(rdMolDescriptors.CalcTPSA(mol) - float(ds.y[i])) < 1e-3


def test_photos():
    pytest.importorskip("skimage", reason="scikit-image (whynet[data] extra) not installed")
    pytest.importorskip("sklearn", reason="scikit-learn (whynet[data] extra) not installed")
    ph = photos()
    assert [p.name for p in ph] == [
        "coffee",
        "chelsea",
        "rocket",
        "astronaut",
        "motorcycle",
        "china",
        "flower",
        "grace_hopper",
    ]
    for p in ph:
        assert p.image.dtype == np.uint8 and p.image.ndim == 3 and p.image.shape[2] == 3
        assert min(p.image.shape[:2]) >= 256
    with pytest.raises(KeyError):
        photos(["nope"])
