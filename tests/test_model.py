import dataclasses

import pytest
import torch

from bertlite.model import (BERTConfig, BERTModel, Dropout, RealTokens, count_parameters,
                            get_bert_encoding, keep_mask, shared_row_count, true_first)
from bertlite.train import devices
from bertlite.vocab import Vocab


def batch(vocab_size=500, B=4, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, vocab_size, (B, T), generator=g)
    segments = (torch.arange(T) >= T // 2).long().expand(B, T).clone()
    valid_lens = torch.tensor([T, 7, 3, 1][:B])
    pred_positions = torch.tensor([[1, 2, 5], [3, 4, 0], [1, 2, 0], [0, 0, 0]][:B])
    return tokens, segments, valid_lens, pred_positions


def larger_batch(vocab_size=500):
    """257 real tokens in a (6, 64) grid: the encoder carries 260 rows (`shared_row_count`), so
    three of them are padded positions."""
    tokens, segments, _, _ = batch(vocab_size, B=6, T=64)
    valid_lens = torch.tensor([64, 64, 64, 40, 24, 1])
    pred_positions = torch.tensor([[1, 63, 5], [3, 4, 0], [39, 2, 0], [0, 9, 0], [23, 0, 0], [0, 0, 0]])
    return tokens, segments, valid_lens, pred_positions


def test_shared_row_count_rounds_up_to_7_significant_bits():
    assert [shared_row_count(n) for n in (0, 1, 127, 128, 129, 257, 24046)] == \
        [0, 1, 127, 128, 130, 260, 24064]
    assert all(n <= shared_row_count(n) <= n + n // 64 for n in range(20000))
    real = RealTokens.of(larger_batch()[2], 64)
    assert (real.n, len(real.index)) == (257, 260)
    grid = (torch.arange(64) < larger_batch()[2][:, None]).reshape(-1)
    assert grid[real.index[:257]].all() and not grid[real.index[257:]].any()  # then 3 padded
    assert torch.equal(real.index[:257], grid.nonzero()[:, 0])                 # in their order
    index, n = true_first(torch.tensor([False, True, False] * 50))  # 50 True: no rounding
    assert n == 50 and torch.equal(index, torch.arange(1, 150, 3))


def test_d2l_preset_has_the_books_parameter_count():
    assert count_parameters(BERTModel(BERTConfig.preset("d2l", 20256))) == 5_632_546


@pytest.mark.parametrize("preset", ["d2l", "bert-tiny", "bert-mini"])
def test_fused_attention_equals_from_scratch(preset):
    config = BERTConfig.preset(preset, 500)
    torch.manual_seed(0)
    fused = BERTModel(config).eval()
    scratch = BERTModel(dataclasses.replace(config, fused_attention=False)).eval()
    scratch.load_state_dict(fused.state_dict())
    a, b = fused(*batch()), scratch(*batch())
    for x, y in zip(a[:4], b[:4]):
        assert (x - y).abs().max() <= 1e-5


@pytest.mark.parametrize("preset", ["d2l", "bert-tiny"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("make_batch", [batch, larger_batch])
def test_skipping_padding_gives_the_same_numbers_and_gradients(preset, fused, dropout, make_batch):
    # In training mode. With dropout the masks are drawn for the whole grid either way; without
    # it, fused=True runs PyTorch's fused kernel (with dropout the CPU takes the written-out path).
    # The larger batch also carries three padded positions among its rows (`shared_row_count`).
    config = BERTConfig.preset(preset, 500, fused_attention=fused, dropout=dropout)
    torch.manual_seed(0)
    skip = BERTModel(config)
    full = BERTModel(dataclasses.replace(config, skip_padding=False))
    full.load_state_dict(skip.state_dict())
    tokens, segments, valid_lens, pred = make_batch()
    real = torch.arange(tokens.shape[1]) < valid_lens[:, None]
    outs = []
    for net in (skip, full):
        torch.manual_seed(1)
        outs.append(net(tokens, segments, valid_lens, pred))
    assert (outs[0].encoded - outs[1].encoded)[real].abs().max() <= 1e-6
    assert outs[0].encoded[~real].eq(0).all()  # padded positions carry zeros, not leftovers
    for a, b in zip(outs[0][1:4], outs[1][1:4]):
        assert (a - b).abs().max() <= 1e-6
    for out in outs:
        (out.mlm_logits.logsumexp(-1).sum() + out.nsp_logits.sum()).backward()
    for (name, p), q in zip(skip.named_parameters(), full.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert skip(tokens).encoded.shape == (*tokens.shape, config.hidden)  # no valid_lens: nothing to skip
    real_tokens = RealTokens.of(valid_lens, tokens.shape[1])
    rows = torch.randn(len(real_tokens.index), config.hidden)
    with pytest.raises(ValueError, match="without valid_lens"):  # the padding would go unmasked
        skip.blocks[0].attention(rows, None, real_tokens)


def test_a_sequence_without_real_tokens_changes_no_gradient():
    # The written-out attention masks the padded keys without autograd on the real tokens
    # (the softmax already gives them 0 gradient); a row of valid length 0 has every key
    # masked, so its softmax is uniform: its gradients must still reach no weight
    config = BERTConfig.preset("d2l", 500, fused_attention=False, dropout=0.0)
    torch.manual_seed(0)
    net = BERTModel(config)
    tokens, segments, _, _ = batch()
    grads = []
    for keep, valid_lens in (([0, 1, 2, 3], [12, 7, 0, 3]), ([0, 1, 3], [12, 7, 3])):
        net.zero_grad()
        encoded = net.encode(tokens[keep], segments[keep], torch.tensor(valid_lens))
        (encoded ** 2).sum().backward()
        grads.append([p.grad.clone() for p in net.blocks.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("valid_lens, T", [([5, 0, 7, 3], 7), ([0, 0], 7),
                                           (larger_batch()[2].tolist(), 64)])
def test_real_tokens_heads_match_the_grid_route(valid_lens, T):
    """`RealTokens.heads` and `rows_of_heads` give what the grid, split and transposes give,
    forward and backward, with a sequence of no real token, with no real token at all, and with
    padded positions among the rows (the last case: 257 real tokens, 260 rows)."""
    H, nh = 8, 2
    real = RealTokens.of(torch.tensor(valid_lens), T)
    B, N = len(valid_lens), len(real.index)
    qkv = torch.randn(N, 3 * H, requires_grad=True)
    heads = torch.stack(real.heads(qkv, nh))
    def grid():  # every row of qkv in its place
        return qkv.new_zeros(B * T, 3 * H).index_copy(0, real.index, qkv)
    reference = grid().view(B, T, 3, nh, H // nh).permute(2, 0, 3, 1, 4)
    assert all(x.is_contiguous() for x in real.heads(qkv, nh)) and torch.equal(heads, reference)
    w = torch.randn(heads.shape)
    got, = torch.autograd.grad((heads * w).sum(), qkv)
    expected, = torch.autograd.grad((reference * w).sum(), qkv)
    assert torch.equal(got, expected)
    q_only, = torch.autograd.grad(real.heads(qkv, nh)[0].sum(), qkv)  # k and v unused
    assert torch.equal(q_only, torch.autograd.grad(grid()[..., :H].sum(), qkv)[0])
    out = torch.randn(B, nh, T, H // nh, requires_grad=True)
    rows = real.rows_of_heads(out)
    reference = real.rows(out.transpose(1, 2).reshape(B, T, H))
    assert torch.equal(rows, reference)
    w = torch.randn(rows.shape)
    got, = torch.autograd.grad((rows * w).sum(), out)
    expected, = torch.autograd.grad((reference * w).sum(), out)
    assert torch.equal(got, expected)


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("bert-tiny", 500)).eval()
    tokens, segments, valid_lens, pred = batch()
    other = tokens.clone()
    other[1, 7:] = 9  # change only padding of sequence 1 (valid length 7)
    a, b = net(tokens, segments, valid_lens, pred), net(other, segments, valid_lens, pred)
    assert torch.allclose(a.encoded[1, :7], b.encoded[1, :7], atol=1e-6)
    assert torch.allclose(a.nsp_logits, b.nsp_logits, atol=1e-6)


def test_output_shapes_and_tied_decoder():
    net = BERTModel(BERTConfig.preset("bert-tiny", 500))
    out = net(*batch())
    assert out.encoded.shape == (4, 12, 128) and out.mlm_logits.shape == (4, 3, 500)
    assert out.nsp_logits.shape == (4, 2) and out.pooled.shape == (4, 128)
    assert net.mlm.decoder.weight is net.embeddings.token.weight
    hidden = net(*batch(), mlm_logits=False)
    assert hidden.mlm_logits is None and hidden.mlm_hidden.shape == (4, 3, 128)


def test_bad_shapes_get_clear_errors():
    net = BERTModel(BERTConfig.preset("d2l", 500, max_len=16))
    tokens, segments, valid_lens, pred = batch()
    with pytest.raises(ValueError, match="batch dimension"):
        net(tokens[0])
    with pytest.raises(ValueError, match="segments"):
        net(tokens, segments[:, :5])
    with pytest.raises(ValueError, match="valid_lens"):
        net(tokens, segments, valid_lens[:2])
    with pytest.raises(ValueError, match="pred_positions"):
        net(tokens, segments, valid_lens, pred[0])
    with pytest.raises(ValueError, match="position table"):
        net(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        BERTModel(BERTConfig(hidden=10, heads=3))
    with pytest.raises(ValueError, match="unknown preset"):
        BERTConfig.preset("bert-huge", 10)


def test_get_bert_encoding_is_deterministic_and_restores_mode():
    vocab = Vocab("a crane flew over the river bank".split())
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("d2l", len(vocab), dropout=0.5))
    net.train()
    a = get_bert_encoding(net, vocab, ["a", "crane"], ["the", "bank"])
    b = get_bert_encoding(net, vocab, ["a", "crane"], ["the", "bank"])
    assert torch.equal(a, b) and a.shape == (7, 128) and not a.requires_grad  # <cls> a crane <sep> the bank <sep>
    assert net.training  # put back as it was


def test_dropout_keeps_the_expected_value():
    torch.manual_seed(0)
    d = Dropout(0.2)
    y = d(torch.ones(200_000))
    assert abs((y == 0).float().mean().item() - 0.2) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(d.eval()(torch.ones(3)), torch.ones(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_keep_mask_has_the_values_of_the_written_out_formula(dtype):
    # keep_mask scales a 0/1 tensor instead of calling torch.where (a third of the time): the
    # numbers must be where's, and with `real` exactly the real rows of the whole grid's mask
    n, k = 4 * 7 * 9, round(0.2 * 65536)
    torch.manual_seed(1)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # every 64-bit pattern
    keep = bits.view(torch.int16)[:n] >= k - 32768
    expected = torch.where(keep, 65536 / (65536 - k), 0.0).to(dtype).view(4, 7, 9)
    real = RealTokens.of(torch.tensor([5, 0, 7, 3]), 7)
    torch.manual_seed(1)
    assert torch.equal(keep_mask((4, 7, 9), 0.2, dtype), expected)
    torch.manual_seed(1)
    rows = keep_mask((4, 7, 9), 0.2, dtype, real=real)
    assert rows.dtype == dtype and torch.equal(rows, real.rows(expected))


def test_bf16_autocast_runs_the_whole_encoder_in_bf16():
    # Under bf16 autocast the encoder carries bf16 from the embeddings on (not only inside its
    # products), and stays close to fp32; fp32 outside autocast is untouched
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("d2l", 500)).eval()
    tokens, segments, valid_lens, _ = batch()
    with torch.no_grad():
        fp32 = net.encode(tokens, segments, valid_lens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net.encode(tokens, segments, valid_lens)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert (bf16.float() - fp32).abs().max() < 0.1 and torch.all(bf16[3, 1:] == 0)  # padding stays 0


def test_devices_fall_back_to_cpu():
    devs = devices()
    assert devs and devs[0].type in ("cpu", "cuda", "mps")


def test_the_benchmarks_book_style_step_computes_the_same_function():
    # benchmarks/model_step.py times bertlite against `book_style` on the same weights: the
    # baseline must be the same model computed the book's way (every position, nn.Dropout).
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("d2l", 500))
    book = common.book_style(BERTModel(net.config))
    book.load_state_dict(net.state_dict())
    assert not book.config.skip_padding and isinstance(book.blocks[0].dropout, torch.nn.Dropout)
    real = torch.arange(12) < batch()[2][:, None]
    a, b = net.eval()(*batch()), book.eval()(*batch())
    assert (a.encoded - b.encoded)[real].abs().max() <= 1e-5
    assert (a.mlm_logits - b.mlm_logits).abs().max() <= 1e-5
    book.train()(*batch())  # a training forward, dropout on, runs
