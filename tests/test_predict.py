"""fill_mask and perplexity on tiny randomly initialised models: mechanics, not quality."""
import math
import os
import re

import pytest
import torch

from bertlite.model import BERTConfig, BERTModel
from bertlite.predict import fill_mask, perplexity
from bertlite.train import evaluate
from bertlite.vocab import Vocab

WORDS = "the cranes flew over marsh savings bank opened in 1850 . a river".split()


@pytest.fixture
def vocab():
    return Vocab(WORDS)


def tiny_model(vocab_size, dropout=0.0, max_len=16, seed=0):
    torch.manual_seed(seed)
    config = BERTConfig(vocab_size=vocab_size, hidden=16, ffn_hidden=32, heads=2, layers=1,
                        dropout=dropout, max_len=max_len)
    return BERTModel(config).eval()


def check_row(row, k, total=1.0):
    scores = [r["score"] for r in row]
    assert len(row) == k
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert sum(scores) <= total + 1e-6


def all_position_probs(net, ids, segments):
    """Probabilities at every position, from the full encoder output (a different path)."""
    with torch.no_grad():
        encoded = net.encode(torch.tensor([ids]), torch.tensor([segments]))   # (1, T, H)
        logits = net.mlm(encoded, torch.arange(len(ids))[None])                 # (1, T, V)
    return logits[0].softmax(-1)                                                # (T, V)


def test_one_mask_gives_a_flat_sorted_top_k(vocab):
    net = tiny_model(len(vocab))
    row = fill_mask(net, vocab, "The cranes <mask> over the marsh .", top_k=4)
    check_row(row, 4)
    tokens = ["<cls>", "the", "cranes", "<mask>", "over", "the", "marsh", ".", "<sep>"]
    probs = all_position_probs(net, vocab[tokens], [0] * len(tokens))[3]  # (V,)
    assert row[0]["token"] == probs.argmax().item()  # the model's own argmax comes first
    for r in row:
        assert r["token_str"] == vocab.to_tokens(r["token"])
        assert r["score"] == pytest.approx(probs[r["token"]].item(), abs=1e-6)
        assert r["sequence"] == f"the cranes {r['token_str']} over the marsh ."


def test_top_k_larger_than_the_vocabulary_gives_every_token(vocab):
    row = fill_mask(tiny_model(len(vocab)), vocab, "the <mask> bank", top_k=1000)
    check_row(row, len(vocab))
    assert sum(r["score"] for r in row) == pytest.approx(1.0, abs=1e-5)


def test_several_masks_and_a_sentence_pair(vocab):
    net = tiny_model(len(vocab))
    seen = {}
    net.embeddings.register_forward_pre_hook(lambda m, args: seen.update(segments=args[1].tolist()))
    net.mlm.dense.register_forward_hook(lambda m, args, out: seen.update(rows=tuple(args[0].shape)))
    out = fill_mask(net, vocab, "the <mask> bank", top_k=3, text_pair="opened in <mask> .")
    assert len(out) == 2 and all(len(row) == 3 for row in out)
    assert seen["segments"] == [[0] * 5 + [1] * 5]   # <cls> the <mask> bank <sep> | opened in <mask> . <sep>
    assert seen["rows"] == (1, 2, 16)  # the MLM head saw the two masked positions only
    ids = vocab["<cls> the <mask> bank <sep> opened in <mask> . <sep>".split()]
    probs = all_position_probs(net, ids, [0] * 5 + [1] * 5)
    for row, pos in zip(out, (2, 7)):
        check_row(row, 3)
        assert row[0]["token"] == probs[pos].argmax().item()
    assert out[0][0]["sequence"] == f"the {out[0][0]['token_str']} bank <sep> opened in <mask> ."
    assert out[1][0]["sequence"] == f"the <mask> bank <sep> opened in {out[1][0]['token_str']} ."


def test_eval_mode_and_no_grad_then_the_mode_is_restored(vocab):
    net = tiny_model(len(vocab), dropout=0.5).train()
    first = fill_mask(net, vocab, "the cranes <mask> over the marsh")
    assert net.training  # restored
    assert fill_mask(net, vocab, "the cranes <mask> over the marsh") == first  # no dropout noise
    net.eval()
    fill_mask(net, vocab, "the cranes <mask> over the marsh")
    assert not net.training
    assert all(p.grad is None for p in net.parameters())


def test_clear_errors(vocab):
    net = tiny_model(len(vocab))
    with pytest.raises(ValueError, match="no <mask> in the text"):
        fill_mask(net, vocab, "the cranes flew over the marsh")
    with pytest.raises(ValueError, match="no <mask>"):
        fill_mask(net, vocab, "the cranes [MASK] over the marsh")  # the WordPiece spelling
    with pytest.raises(ValueError, match=re.escape("17 tokens") + ".*max_len=16"):
        fill_mask(net, vocab, "the " * 14 + "<mask>")
    with pytest.raises(ValueError, match="top_k"):
        fill_mask(net, vocab, "the <mask>", top_k=0)
    with pytest.raises(ValueError, match="vocabulary the model was trained with"):
        fill_mask(tiny_model(len(vocab) + 1), vocab, "the <mask>")
    assert fill_mask(net, vocab, "the " * 13 + "<mask>")  # 16 tokens: just fits
    with pytest.raises(ValueError, match="holds <sep>: leave it out .* text_pair="):
        fill_mask(net, vocab, "the cranes <mask> <sep> over the marsh")
    with pytest.raises(ValueError, match="holds <cls>"):
        fill_mask(net, vocab, "the <mask>", text_pair="<cls> the")


class TinyWordPiece:
    """A stand-in WordPiece tokenizer with the interface fill_mask relies on: lowercase, split
    words and punctuation, then greedy longest-match-first pieces with ## continuations. Like a
    real one, it would break a literal "[MASK]" into "[", "mask", "]" if it ever saw it."""
    mask_token, cls_token, sep_token, unk_token = "[MASK]", "[CLS]", "[SEP]", "[UNK]"

    def __init__(self, tokens):
        self.tokens, self.ids = list(tokens), {t: i for i, t in enumerate(tokens)}

    def __len__(self):
        return len(self.tokens)

    def tokenize(self, text):
        out = []
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
            pieces, start = [], 0
            while start < len(word):
                end = next((e for e in range(len(word), start, -1)
                            if ("##" if start else "") + word[start:e] in self.ids), None)
                if end is None:
                    pieces = [self.unk_token]
                    break
                pieces.append(("##" if start else "") + word[start:end])
                start = end
            out += pieces
        return out

    def convert_tokens_to_ids(self, tokens):
        return [self.ids.get(t, self.ids[self.unk_token]) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "play", "##ing", "##ed",
             "on", "mat", ".", ","]


def test_wordpiece_tokenizer_by_duck_typing():
    tok = TinyWordPiece(WORDPIECE)
    net = tiny_model(len(tok))
    seen = {}
    net.embeddings.register_forward_pre_hook(lambda m, args: seen.update(ids=args[0][0].tolist()))
    row = fill_mask(net, tok, "The cat play[MASK] on the mat.", top_k=len(tok))
    assert tok.convert_ids_to_tokens(seen["ids"]) == [
        "[CLS]", "the", "cat", "play", "[MASK]", "on", "the", "mat", ".", "[SEP]"]
    check_row(row, len(tok))
    for r in row:  # a ## continuation joins the word before it
        t = r["token_str"]
        filled = "play" + (t[2:] if t.startswith("##") else " " + t)
        assert r["sequence"] == f"the cat {filled} on the mat ."
    with pytest.raises(ValueError, match=re.escape("no [MASK]")):
        fill_mask(net, tok, "the cat <mask> on the mat")


def test_bertlites_own_wordpiece_tokenizer():
    wordpiece = pytest.importorskip("bertlite.wordpiece")
    tok, stand_in = wordpiece.WordPieceTokenizer(WORDPIECE), TinyWordPiece(WORDPIECE)
    net = tiny_model(len(tok))
    text = "The cat play[MASK], on the [MASK]."
    assert fill_mask(net, tok, text, top_k=3) == fill_mask(net, stand_in, text, top_k=3)


@pytest.fixture(scope="module")
def transformers():
    """Imported only when the test runs (the import alone takes several seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
    module = pytest.importorskip("transformers")
    module.logging.set_verbosity_error()
    module.utils.logging.disable_progress_bar()
    module.BertTokenizer, module.BertForMaskedLM, module.pipeline  # noqa: B018 (lazy imports)
    return module


def tiny_hf(tmp_path, transformers, model_class: str, perturb: float = 0.0):
    """(BertTokenizer, a tiny Hugging Face `model_class`, the same weights loaded into bertlite)."""
    from bertlite.hf import load_hf_checkpoint
    (tmp_path / "vocab.txt").write_text("\n".join(WORDPIECE) + "\n")
    tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    hf = getattr(transformers, model_class)(transformers.BertConfig(
        vocab_size=len(WORDPIECE), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16)).eval()
    if perturb:
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(perturb * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "model")
    net, _ = load_hf_checkpoint(tmp_path / "model")
    return tok, hf, net


def test_same_answers_as_the_hugging_face_pipeline(tmp_path, transformers):
    tok, hf, net = tiny_hf(tmp_path, transformers, "BertForMaskedLM")
    pipe = transformers.pipeline("fill-mask", model=hf, tokenizer=tok)
    for text in ("the cat play[MASK] on the mat.", "the [MASK] played, the cat [MASK]."):
        ref, ours = pipe(text, top_k=5), fill_mask(net, tok, text, top_k=5)
        if isinstance(ours[0], dict):
            ref, ours = [ref], [ours]
        for ref_row, row in zip(ref, ours):
            assert [r["token_str"].replace(" ", "") for r in ref_row] == [r["token_str"] for r in row]
            assert [r["score"] for r in row] == pytest.approx([r["score"] for r in ref_row], abs=1e-5)


def test_perplexity_is_exp_of_the_evaluated_mlm_loss(tiny):
    net = tiny_model(len(tiny.vocab), dropout=0.2, max_len=64).train()
    ppl = perplexity(net, tiny)
    assert net.training
    assert ppl == pytest.approx(math.exp(evaluate(net, tiny)["mlm_loss"]), rel=1e-6)
    assert perplexity(net, tiny, batch_size=100) == pytest.approx(ppl, rel=1e-5)  # same masks


def test_a_uniform_model_has_perplexity_equal_to_the_vocabulary_size(tiny):
    net = tiny_model(len(tiny.vocab), max_len=64)
    with torch.no_grad():  # all logits 0: every token equally likely
        net.mlm.decoder.weight.zero_()
        net.mlm.decoder.bias.zero_()
    assert perplexity(net, tiny) == pytest.approx(len(tiny.vocab), rel=1e-4)


def test_next_sentence_probability_reads_the_nsp_head(vocab):
    from bertlite.data import tokens_and_segments
    from bertlite.predict import next_sentence_probability
    net = tiny_model(len(vocab), dropout=0.5).train()
    with torch.no_grad():  # a head that is far from 50/50, so a swapped label would show
        net.nsp.bias.copy_(torch.tensor([-1.0, 1.0]))
    a, b = "the cranes flew over marsh .", "a river bank ."
    p = next_sentence_probability(net, vocab, a, b)
    assert net.training                                     # the mode is restored
    tokens, segments = tokens_and_segments(a.split(), b.split())
    with torch.no_grad():
        logits = net.eval()(torch.tensor([vocab[tokens]]), torch.tensor([segments])).nsp_logits[0]
    assert p == pytest.approx(logits.softmax(-1)[1].item()) and p > 0.5
    with pytest.raises(ValueError, match="max_len=16: shorten it"):
        next_sentence_probability(net, vocab, " ".join(["the"] * 10), " ".join(["a"] * 10))
    with pytest.raises(ValueError, match="text_b is empty"):
        next_sentence_probability(net, vocab, a, "  ")
    with pytest.raises(ValueError, match="text_a contains <sep>"):
        next_sentence_probability(net, vocab, "the cranes <sep> flew", b)
    with pytest.raises(TypeError, match="text_b must be a sentence"):
        next_sentence_probability(net, vocab, a, None)


def test_next_sentence_probability_matches_hugging_face(tmp_path, transformers):
    from bertlite.predict import next_sentence_probability
    # every weight perturbed, the NSP head included
    tok, hf, net = tiny_hf(tmp_path, transformers, "BertForPreTraining", perturb=0.1)
    a, b = "the cat played.", "the mat."
    enc = tok(a, b, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc).seq_relationship_logits.softmax(-1)[0, 0].item()   # HF: label 0 is "next"
    assert abs(ref - 0.5) > 0.02                  # far from 50/50, so a swapped label would show
    from bertlite.wordpiece import WordPieceTokenizer
    ours = WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt")   # bertlite's own tokenizer too
    for t in (tok, ours):
        assert next_sentence_probability(net, t, a, b) == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("kwargs,error", [({"top_k": True}, ValueError), ({"top_k": 0}, ValueError),
                                          ({"text": None}, TypeError), ({"text_pair": 5}, TypeError)])
def test_fill_mask_refuses_arguments_of_the_wrong_kind(vocab, kwargs, error):
    args = {"text": "the <mask> bank", "top_k": 3, **kwargs}
    with pytest.raises(error, match="top_k|text"):
        fill_mask(tiny_model(len(vocab)), vocab, **args)
