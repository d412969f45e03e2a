"""Pictures: loss curves, token frequencies, masked examples and attention weights.

matplotlib is imported here only. Every function draws into a new figure of a fixed size (or into
`ax`) and returns the figure; `path=` also saves it as PNG.
"""
from __future__ import annotations

import matplotlib.pyplot as plt  # without a screen, matplotlib draws to files (Agg)
import numpy as np


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def plot_history(history, path=None, figsize=(9, 3.2), references=None):
    """MLM and NSP loss per step (thin), their running mean (thick) and validation points.
    `references` ({"unigram": loss, ...}) adds dashed lines of baselines to the MLM plot; the NSP
    plot always shows chance (ln 2).

    Explained in notebooks/06_pretraining.ipynb.
    """
    steps = [r for r in history if "eval" not in r]
    evals = [r for r in history if "eval" in r]
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    lines = ({**(references or {})}, {"chance (ln 2)": float(np.log(2))})
    for ax, key, title, refs in zip(axes, ("mlm_loss", "nsp_loss"),
                                    ("masked LM loss", "next sentence loss"), lines):
        x = np.array([r["step"] for r in steps])
        y = np.array([r[key] for r in steps])
        ax.plot(x, y, lw=0.8, alpha=0.5, label="per step")
        k = max(1, len(y) // 10)
        ax.plot(x[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=2, label=f"mean of {k}")
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval"][key] for r in evals], "o",
                    color="black", label="validation")
        for (name, value), style in zip(refs.items(), (":", "--", "-.")):
            ax.axhline(value, color="grey", ls=style, lw=1, label=name)
        ax.set(title=title, xlabel="step", ylabel="cross-entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_token_frequencies(vocab, path=None, figsize=(5, 3.5)):
    """Frequency against rank on log-log axes: a straight-ish line is Zipf's law.

    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """
    freqs = sorted((c for _, c in vocab.token_freqs), reverse=True)
    fig, ax = plt.subplots(figsize=figsize)
    ax.loglog(np.arange(1, len(freqs) + 1), freqs)
    ax.set(xlabel="rank of the token", ylabel="count in the corpus", title="token frequencies")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def show_masking(vocab, original, masked, pred_positions, mlm_weights, path=None, width=10):
    """One example as a grid of tokens: what each predicted position held and what it became
    (`<mask>`, a random token, or itself). Explained in notebooks/03_masking.ipynb.
    """
    original, masked = np.asarray(original), np.asarray(masked)
    n = int((original != vocab["<pad>"]).sum())
    chosen = {int(p) for p, w in zip(pred_positions, mlm_weights) if w > 0}
    colors = {"mask": "#f4a261", "random": "#e76f51", "kept": "#2a9d8f"}
    rows = (n + width - 1) // width
    fig, ax = plt.subplots(figsize=(width * 1.05, rows * 0.62 + 0.5))
    for i in range(n):
        r, c = divmod(i, width)
        before, after = vocab.to_tokens(int(original[i])), vocab.to_tokens(int(masked[i]))
        kind = None
        if i in chosen:
            kind = "mask" if after == "<mask>" else "kept" if after == before else "random"
        ax.add_patch(plt.Rectangle((c, -r - 0.9), 0.96, 0.86, color=colors.get(kind, "#eeeeee")))
        ax.text(c + 0.48, -r - 0.33, before, ha="center", va="center", fontsize=8)
        if kind:
            ax.text(c + 0.48, -r - 0.68, "→ " + after, ha="center", va="center", fontsize=7)
    ax.set(xlim=(0, width), ylim=(-rows, 0.2))
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=v) for v in colors.values()]
    ax.legend(handles, ["→ <mask> (80%)", "→ random token (10%)", "kept (10%)"],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    return _save(fig, path)


def plot_attention(weights, tokens, title="attention weights", path=None, figsize=(5.5, 5), ax=None):
    """A (queries x keys) heatmap of one head's attention weights (into `ax`, if given).

    Explained in notebooks/04_attention_encoder.ipynb.
    """
    weights = np.asarray(weights)
    fig, ax = plt.subplots(figsize=figsize) if ax is None else (ax.figure, ax)
    im = ax.imshow(weights, cmap="Reds", vmin=0, vmax=max(float(weights.max()), 1e-9))
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set(xlabel="key", ylabel="query", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)
