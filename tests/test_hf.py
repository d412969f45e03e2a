"""bertlite and Hugging Face transformers compute the same function on the same weights."""
import os

import pytest
import torch

from bertlite.hf import load_hf_checkpoint, save_hf_checkpoint
from bertlite.model import BERTConfig, BERTModel

transformers = pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def hf_config(**kw):
    return transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=128,
                                   max_position_embeddings=40, **kw)


def padded_batch():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, 300, (3, 16), generator=g)
    segments = (torch.arange(16) >= 9).long().expand(3, 16).clone()
    valid_lens = torch.tensor([16, 10, 4])
    pred_positions = torch.tensor([[1, 3, 5], [2, 4, 0], [1, 2, 3]])
    return tokens, segments, valid_lens, pred_positions


def perturb(model, seed=0):
    """Move every parameter away from its init (biases start at 0, LayerNorm gains at 1: left
    there, a bias or gain read into the wrong place would not change a single output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied matrix is listed (and moved) once
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def compare(hf, net, atol=1e-5):
    tokens, segments, valid_lens, pred = padded_batch()
    attention_mask = (torch.arange(16) < valid_lens[:, None]).long()
    with torch.no_grad():
        ref = hf(input_ids=tokens, token_type_ids=segments, attention_mask=attention_mask,
                 output_hidden_states=True)
        ours = net(tokens, segments, valid_lens, pred)
    real = attention_mask.bool()
    assert (ref.hidden_states[-1] - ours.encoded)[real].abs().max() <= atol
    mlm = ref.prediction_logits[torch.arange(3)[:, None], pred]  # HF decodes every position
    assert (mlm - ours.mlm_logits).abs().max() <= atol
    # Hugging Face's class 0 is "B follows A", ours is class 1.
    assert (ref.seq_relationship_logits.flip(-1) - ours.nsp_logits).abs().max() <= atol


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("tied", [True, False])
def test_load_pretraining_checkpoint_matches_transformers(tmp_path, act, tied):
    torch.manual_seed(0)
    hf = perturb(transformers.BertForPreTraining(hf_config(hidden_act=act, tie_word_embeddings=tied)))
    if not tied:  # transformers adds decoder.bias; predictions.bias is then a stray copy
        assert not torch.equal(hf.cls.predictions.decoder.bias, hf.cls.predictions.bias)
    hf.save_pretrained(tmp_path)
    net, report = load_hf_checkpoint(tmp_path)
    assert report.missing == [] and report.unexpected == []
    assert net.config.tie_decoder == tied
    compare(hf, net.eval())


@pytest.mark.parametrize("tied", [True, False])
def test_export_bertlite_to_hf_and_back(tmp_path, tied):
    torch.manual_seed(0)
    config = BERTConfig.preset("bert-tiny", 300, max_len=40, tie_decoder=tied)
    net = perturb(BERTModel(config))
    save_hf_checkpoint(net, tmp_path / "out")
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "out",
                                                               output_loading_info=True)
    assert all(not v for v in info.values()), info  # nothing missing, unexpected or re-initialised
    compare(hf.eval(), net)
    back, report = load_hf_checkpoint(tmp_path / "out")
    assert report.missing == [] and report.unexpected == []
    for (name, a), b in zip(net.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_hf_round_trip_through_bertlite(tmp_path):
    """transformers -> bertlite -> transformers gives back every tensor that the model uses
    exactly; untied, `cls.predictions.bias` is used by nothing and comes back as decoder.bias."""
    torch.manual_seed(0)
    hf = perturb(transformers.BertForPreTraining(hf_config(tie_word_embeddings=False)))
    hf.save_pretrained(tmp_path / "hf")
    net, _ = load_hf_checkpoint(tmp_path / "hf")
    save_hf_checkpoint(net, tmp_path / "again")
    again = transformers.BertForPreTraining.from_pretrained(tmp_path / "again").eval()
    for name, p in hf.state_dict().items():
        if name != "cls.predictions.bias":
            assert torch.equal(p, again.state_dict()[name]), name
    compare(again, net.eval())


def test_plain_bertmodel_checkpoint_reports_fresh_heads(tmp_path):
    transformers.BertModel(hf_config()).save_pretrained(tmp_path)
    net, report = load_hf_checkpoint(tmp_path)
    assert report.missing and all(n.startswith(("mlm.", "nsp.")) for n in report.missing)
    assert "freshly initialised" in str(report)


def test_pickle_checkpoint_is_loaded_safely(tmp_path):
    torch.manual_seed(0)
    hf = perturb(transformers.BertForPreTraining(hf_config()))
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # the older pickle format
    net, _ = load_hf_checkpoint(tmp_path)
    compare(hf, net.eval())


def test_mismatched_or_incomplete_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    transformers.BertForPreTraining(hf_config()).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a complete"):
        load_hf_checkpoint(tmp_path)
    state["bert.encoder.layer.1.output.dense.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="shape"):
        load_hf_checkpoint(tmp_path)


def test_d2l_architecture_cannot_be_exported(tmp_path):
    with pytest.raises(ValueError, match="embedding_norm"):
        save_hf_checkpoint(BERTModel(BERTConfig.preset("d2l", 50)), tmp_path)
