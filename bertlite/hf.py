"""Hugging Face BERT checkpoints in and out of bertlite.

A checkpoint folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`). Our
module names follow the book (`blocks.0.attention.W_q`); `hf_name_map` translates them to the
names real checkpoints use (`bert.encoder.layer.0.attention.self.query`). Loading is then a copy
loop with shape checks, and the parity test shows that both libraries compute the same function.
Explained in notebooks/05_heads_and_loss.ipynb.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from .checks import load_safetensors, load_torch, read_json, require_keys
from .model import BERTConfig, BERTModel

HEADS = ("pooler.", "mlm.", "nsp.")  # absent from a plain BertModel checkpoint
DECODER_BIAS = "cls.predictions.decoder.bias"  # transformers' second name for the MLM bias


def hf_name_map(layers: int) -> dict[str, str]:
    """{Hugging Face name: bertlite name} for every parameter of `BertForPreTraining`."""
    names = {"bert.embeddings.word_embeddings.weight": "embeddings.token.weight",
             "bert.embeddings.token_type_embeddings.weight": "embeddings.segment.weight",
             "bert.embeddings.position_embeddings.weight": "embeddings.position.weight",
             "cls.predictions.decoder.weight": "mlm.decoder.weight",
             "cls.predictions.bias": "mlm.decoder.bias"}
    modules = {"bert.embeddings.LayerNorm": "embeddings.norm", "bert.pooler.dense": "pooler",
               "cls.predictions.transform.dense": "mlm.dense",
               "cls.predictions.transform.LayerNorm": "mlm.norm", "cls.seq_relationship": "nsp"}
    for i in range(layers):
        hf, ours = f"bert.encoder.layer.{i}.", f"blocks.{i}."
        modules.update({hf + "attention.self.query": ours + "attention.W_q",
                        hf + "attention.self.key": ours + "attention.W_k",
                        hf + "attention.self.value": ours + "attention.W_v",
                        hf + "attention.output.dense": ours + "attention.W_o",
                        hf + "attention.output.LayerNorm": ours + "norm1",
                        hf + "intermediate.dense": ours + "ffn.dense1",
                        hf + "output.dense": ours + "ffn.dense2",
                        hf + "output.LayerNorm": ours + "norm2"})
    for hf, ours in modules.items():
        names.update({f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"})
    return names


HF_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")


def config_from_hf(hf: dict) -> BERTConfig:
    """A `BERTConfig` from a Hugging Face `config.json` dictionary."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported")
    if hf.get("hidden_act", "gelu") not in ("gelu", "relu"):
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (gelu or relu)")
    return BERTConfig(vocab_size=hf["vocab_size"], hidden=hf["hidden_size"],
                      ffn_hidden=hf["intermediate_size"], heads=hf["num_attention_heads"],
                      layers=hf["num_hidden_layers"], dropout=hf.get("hidden_dropout_prob", 0.1),
                      max_len=hf.get("max_position_embeddings", 512),
                      segments=hf.get("type_vocab_size", 2), activation=hf.get("hidden_act", "gelu"),
                      embedding_norm=True, tie_decoder=hf.get("tie_word_embeddings", True),
                      norm_eps=hf.get("layer_norm_eps", 1e-12),
                      init_std=hf.get("initializer_range", 0.02))


def config_to_hf(c: BERTConfig) -> dict:
    if not c.embedding_norm:
        raise ValueError("Hugging Face BERT always normalises its embeddings: only models with "
                         "embedding_norm=True (the bert-* presets) can be exported")
    return {"architectures": ["BertForPreTraining"], "model_type": "bert",
            "vocab_size": c.vocab_size, "hidden_size": c.hidden, "intermediate_size": c.ffn_hidden,
            "num_attention_heads": c.heads, "num_hidden_layers": c.layers,
            "hidden_act": c.activation, "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.dropout, "max_position_embeddings": c.max_len,
            "type_vocab_size": c.segments, "layer_norm_eps": c.norm_eps,
            "initializer_range": c.init_std or 0.02, "tie_word_embeddings": c.tie_decoder,
            "position_embedding_type": "absolute", "pad_token_id": 0}


def _flip_nsp(name: str, tensor):
    """Hugging Face's NSP class 0 is "B follows A"; ours is class 1. Swap the two output rows."""
    return tensor.flip(0) if name.startswith("nsp.") else tensor


class LoadReport(NamedTuple):
    missing: list       # bertlite parameters the checkpoint did not have (left as initialised)
    unexpected: list    # checkpoint entries with no place in bertlite (ignored)

    def __str__(self):
        lines = [f"missing (freshly initialised): {', '.join(self.missing) or 'none'}",
                 f"unexpected (ignored): {', '.join(self.unexpected) or 'none'}"]
        return "\n".join(lines)


def _read_state(folder: Path) -> dict:
    if (folder / "model.safetensors").exists():
        return load_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():  # a pickle: never run code from it
        return load_torch(folder / "pytorch_model.bin")  # one line for a cut or hostile file
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def load_hf_checkpoint(folder) -> tuple[BERTModel, LoadReport]:
    """Load a `BertForPreTraining` (or `BertModel`) checkpoint folder into a new `BERTModel`.

    Raises if the encoder itself is incomplete or a shape disagrees; heads missing from a plain
    `BertModel` checkpoint stay freshly initialised and the report lists them.
    """
    folder = Path(folder)
    path = folder / "config.json"
    hf = require_keys(read_json(path), HF_SIZES, path, "not a BERT config.json")
    try:
        config = config_from_hf(hf)
    except (TypeError, ValueError) as e:  # its values, not the user's flags: name the file
        raise ValueError(f"{path}: {e}: not a usable BERT config.json") from None
    net = BERTModel(config)
    ours = net.state_dict()
    names = hf_name_map(config.layers)
    state = _read_state(folder)
    # Transformers adds `cls.predictions.decoder.bias` to the logits. Tied, it is the same tensor as
    # `cls.predictions.bias`; untied (tie_word_embeddings=False) it is its own parameter and the
    # other one is unused, so it is the one to load whenever the checkpoint has it.
    if DECODER_BIAS in state:
        state["cls.predictions.bias"] = state.pop(DECODER_BIAS)
    loaded, unexpected = set(), []
    for key, tensor in state.items():
        hf = key if key.startswith(("bert.", "cls.")) else "bert." + key  # BertModel has no prefix
        name = names.get(hf)
        if name is None:
            if not hf.endswith("position_ids"):  # a buffer, not a parameter
                unexpected.append(key)
            continue
        if tensor.shape != ours[name].shape:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} in the checkpoint, "
                             f"{tuple(ours[name].shape)} in the model")
        ours[name].copy_(_flip_nsp(name, tensor))
        loaded.add(name)
    if config.tie_decoder and "embeddings.token.weight" in loaded:
        loaded.add("mlm.decoder.weight")  # the same tensor
    missing = [n for n in ours if n not in loaded]
    broken = [n for n in missing if not n.startswith(HEADS)]
    if broken:
        raise ValueError(f"{folder} is not a complete BERT checkpoint; missing {broken[:5]}")
    return net, LoadReport(missing, unexpected)


def save_hf_checkpoint(net: BERTModel, folder) -> None:
    """Write `config.json` and `model.safetensors` that `BertForPreTraining.from_pretrained` loads."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(net.config)
    ours = net.state_dict()
    state = {hf: _flip_nsp(name, ours[name]).detach().cpu().contiguous()
             for hf, name in hf_name_map(net.config.layers).items()
             if not (net.config.tie_decoder and name == "mlm.decoder.weight")}  # tied: stored once
    if not net.config.tie_decoder:  # untied, transformers reads the decoder's own bias
        state[DECODER_BIAS] = state["cls.predictions.bias"].clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
