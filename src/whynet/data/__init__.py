"""Real data sets that work offline (read from files shipped by Debian and PyPI packages).

Images are float32 in [0, 1] with shape (1, H, W); text and SMILES are int64 token ids padded
with 0 at the end. See ``docs/data.md`` for sources, formats and normalisation. Functions that
need an optional package (scikit-learn, scikit-image, RDKit, mlxtend) import it on call and raise
an ``ImportError`` naming the ``whynet[data]`` extra when it is missing.
"""

from whynet.data._base import ArrayDataset, DatasetMissingError, ImageDataset
from whynet.data.canvas import CanvasDataset, canvas
from whynet.data.fashion import FASHION_CLASSES, fashion_mnist, mnist_subset
from whynet.data.idx import read_idx, write_idx
from whynet.data.molecules import (
    MoleculeDataset,
    atom_char_spans,
    atom_token_mask,
    encode_smiles,
    nci_molecules,
    parse_smiles,
    per_atom,
    smiles_vocab,
    solubility,
    tokenize_smiles,
)
from whynet.data.noise import NoisyLabels, with_noisy_labels
from whynet.data.photos import PHOTO_NAMES, Photo, photos
from whynet.data.text import (
    SENTIMENT_CLASSES,
    TextDataset,
    Vocab,
    encode_batch,
    rotten_tomatoes,
    tokenize,
)

__all__ = [
    "ArrayDataset",
    "CanvasDataset",
    "DatasetMissingError",
    "FASHION_CLASSES",
    "ImageDataset",
    "MoleculeDataset",
    "NoisyLabels",
    "PHOTO_NAMES",
    "Photo",
    "SENTIMENT_CLASSES",
    "TextDataset",
    "Vocab",
    "atom_char_spans",
    "atom_token_mask",
    "canvas",
    "encode_batch",
    "encode_smiles",
    "fashion_mnist",
    "mnist_subset",
    "nci_molecules",
    "parse_smiles",
    "per_atom",
    "photos",
    "read_idx",
    "rotten_tomatoes",
    "smiles_vocab",
    "solubility",
    "tokenize",
    "tokenize_smiles",
    "with_noisy_labels",
    "write_idx",
]
