"""Using a pre-trained model: fill in masked words, and measure how surprised the model is.

`fill_mask` works like the Hugging Face fill-mask pipeline: write the tokenizer's mask, `<mask>`
(a word-level `bertlite.vocab.Vocab`) or `[MASK]` (WordPiece), where a word is missing, and get the
model's top-k guesses with their probabilities. `next_sentence_probability` asks the
next-sentence head whether one text follows another. `perplexity` turns the validation MLM loss into
"as unsure as a uniform choice among this many words".
"""
from __future__ import annotations

import torch

from .data import tokens_and_segments
from .model import evaluating
from .train import evaluate


def _tokenize(text: str, mask: str, tokenize) -> list[str]:
    """Tokenize the text between the masks, so a tokenizer never sees (and splits) the mask."""
    tokens = []
    for i, piece in enumerate(text.split(mask)):
        tokens += ([mask] if i else []) + list(tokenize(piece))
    return tokens


def _detokenize(tokens: list[str]) -> str:
    """Words back to text; WordPiece `##` continuations join the piece before them."""
    return " ".join(tokens).replace(" ##", "")


def _ids(model, tok, tokens: list[str]) -> list[int]:
    """The ids of `tokens`, after checking that they fit the model: its max_len and vocabulary."""
    config = model.config
    if len(tokens) > config.max_len:
        raise ValueError(f"the text is {len(tokens)} tokens with {tok.cls_token} and {tok.sep_token}, "
                         f"more than the model's max_len={config.max_len}: shorten it")
    ids = list(tok.convert_tokens_to_ids(tokens))
    if len(tok) != config.vocab_size:
        raise ValueError(f"the vocabulary has {len(tok)} tokens but the model "
                         f"{config.vocab_size}: use the vocabulary the model was trained with")
    if max(ids) >= config.vocab_size:
        raise ValueError(f"token id {max(ids)} is outside the model's vocabulary of "
                         f"{config.vocab_size}: use the tokenizer the model was trained with")
    return ids


def fill_mask(model, vocab_or_tokenizer, text: str, top_k: int = 5, text_pair: str | None = None):
    """The model's `top_k` most likely tokens for each mask in `text` (and `text_pair`, read as
    sentence B), with their probabilities, like the Hugging Face fill-mask pipeline.

    Returns, for each mask in order, a list of `{"score", "token", "token_str", "sequence"}`
    dicts, best first ("token" is the id, "token_str" the string, as in the pipeline); with a
    single mask just that list, as the pipeline does. "sequence" is the
    input with this mask filled in and any other mask left as it is. The probabilities are a
    softmax over the whole vocabulary, computed in eval mode (no dropout) without gradients; the
    MLM head runs at the masked positions only, through the model's `pred_positions`.
    Explained in notebooks/08_fill_mask.ipynb.
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:  # True is an int
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    for name, value in (("text", text), ("text_pair", text_pair)):
        if not isinstance(value, str) and (name == "text" or value is not None):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    tok = vocab_or_tokenizer  # the tokenizer interface: bertlite.inputs.Tokenizer
    mask, cls, sep = tok.mask_token, tok.cls_token, tok.sep_token
    tokens_a = _tokenize(text, mask, tok.tokenize)
    tokens_b = None if text_pair is None else _tokenize(text_pair, mask, tok.tokenize)
    for special in (cls, sep, getattr(tok, "pad_token", cls)):  # fill_mask adds <cls>, <sep>
        if special in tokens_a + (tokens_b or []):
            raise ValueError(f"the text holds {special}: leave it out (fill_mask adds {cls} and "
                             f"{sep} itself) and pass a second sentence as text_pair=...")
    tokens, segments = tokens_and_segments(tokens_a, tokens_b, cls, sep)
    positions = [i for i, t in enumerate(tokens) if t == mask]
    if not positions:
        raise ValueError(f"no {mask} in the text: write {mask} where the "
                         f"model should fill in a word, e.g. 'the cat {mask} on the mat'")
    ids = _ids(model, tok, tokens)
    device = next(model.parameters()).device
    with evaluating(model):  # dropout off: the same text always gives the same answer
        out = model(torch.tensor([ids], device=device),               # (1, T)
                    torch.tensor([segments], device=device),          # (1, T)
                    torch.tensor([len(ids)], device=device),          # (1,) no padding
                    torch.tensor([positions], device=device))         # (1, M) the masks
    probs = out.mlm_logits[0].float().softmax(dim=-1)                     # (M, V)
    scores, best = probs.topk(min(top_k, probs.shape[-1]), dim=-1)        # (M, k) each
    results = []
    for pos, row_scores, row_ids in zip(positions, scores.tolist(), best.tolist()):
        row = []
        for score, token_id, token in zip(row_scores, row_ids, tok.convert_ids_to_tokens(row_ids)):
            filled = tokens[:pos] + [token] + tokens[pos + 1:]
            sequence = _detokenize(filled[1:len(tokens_a) + 1])
            if tokens_b is not None:
                sequence += f" {sep} " + _detokenize(filled[len(tokens_a) + 2:-1])
            row.append({"score": score, "token": token_id, "token_str": token, "sequence": sequence})
        results.append(row)
    return results[0] if len(results) == 1 else results


def next_sentence_probability(model, vocab_or_tokenizer, text_a: str, text_b: str) -> float:
    """The probability the model's next-sentence head gives to "`text_b` follows `text_a`", read
    from its pair input `<cls> a <sep> b <sep>`, in eval mode without gradients (like Hugging
    Face's `BertForNextSentencePrediction`, whose label 0 is "is next"; bertlite's is 1).

    For a model pre-trained with `--pair-task sop` it is the probability that the two are in
    order. A checkpoint without a trained NSP head (a plain Hugging Face `BertModel`, such as
    all-MiniLM-L6-v2) has a fresh one, and the answer means nothing. The model has only seen
    pairs as long as those it was pre-trained on (64 tokens for the shipped models).
    Explained in notebooks/08_fill_mask.ipynb.
    """
    tok = vocab_or_tokenizer
    pieces = []
    for name, text in (("text_a", text_a), ("text_b", text_b)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a sentence (a str), not {type(text).__name__}")
        tokens = list(tok.tokenize(text))
        if not tokens:
            raise ValueError(f"{name} is empty: give two sentences")
        special = [t for t in tokens if t in (tok.cls_token, tok.sep_token, tok.pad_token)]
        if special:
            raise ValueError(f"{name} contains {special[0]}: the function adds {tok.cls_token} and "
                             f"{tok.sep_token} itself; give the plain sentences")
        pieces.append(tokens)
    tokens, segments = tokens_and_segments(*pieces, tok.cls_token, tok.sep_token)
    ids = _ids(model, tok, tokens)
    device = next(model.parameters()).device
    with evaluating(model):
        out = model(torch.tensor([ids], device=device), torch.tensor([segments], device=device))
    return out.nsp_logits[0].float().softmax(dim=-1)[1].item()   # [not next, is next]


def perplexity(model, dataset, batch_size: int = 256) -> float:
    """exp(mean MLM cross-entropy) over the real masked tokens of `dataset` (padding slots do not
    count), computed by `bertlite.train.evaluate` in eval mode. A model guessing uniformly among V
    tokens scores V; lower is better.

    The masks come from the dataset's seed (`load_pretrain_dataset(..., seed=0)`): build the
    dataset with a fixed seed (and static masking) and every model is scored on the very same
    masked tokens, so the numbers are comparable between runs and models.
    Explained in notebooks/08_fill_mask.ipynb.
    """
    return evaluate(model, dataset, batch_size)["perplexity"]
