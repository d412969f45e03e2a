import pytest
import torch
import torch.nn.functional as F

from bertlite.loss import (_row_max, d2l_mlm_loss, fused_mlm_loss, mlm_accuracy, mlm_loss,
                           nsp_accuracy, nsp_loss, pretrain_loss)
from bertlite.model import BERTConfig, BERTModel


def example(seed=0, B=6, P=10, V=50):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, P, V, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, P), generator=g)
    weights = (torch.arange(P) < torch.randint(1, P, (B, 1), generator=g)).float()
    labels = labels * weights.long()  # padded slots: label 0 (and position 0)
    return logits, labels, weights


def test_padded_slots_change_neither_loss_nor_gradients():
    logits, labels, weights = example()
    loss = mlm_loss(logits, labels, weights)
    (grad,) = torch.autograd.grad(loss, logits)
    pad = weights == 0
    other_logits = logits.detach().clone()
    other_logits[pad] = torch.randn_like(other_logits[pad]) * 10
    other_logits.requires_grad_()
    other_labels = labels.clone()
    other_labels[pad] = 7
    other = mlm_loss(other_logits, other_labels, weights)
    (other_grad,) = torch.autograd.grad(other, other_logits)
    assert torch.allclose(loss, other)
    assert torch.allclose(grad[~pad], other_grad[~pad]) and not other_grad[pad].any()


def test_loss_is_the_mean_over_real_predictions():
    logits, labels, weights = example()
    real = weights > 0
    assert torch.allclose(mlm_loss(logits, labels, weights), F.cross_entropy(logits[real], labels[real]))


def test_why_the_books_formula_is_wrong():
    logits, labels, weights = example()
    with torch.no_grad():  # a partly trained model: confident on the real slots
        logits.scatter_add_(-1, labels[..., None], 4 * weights[..., None])
    book = d2l_mlm_loss(logits, labels, weights)
    # It equals the plain mean over every slot, padded ones included: the weights do nothing ...
    assert torch.allclose(book, F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1)), atol=1e-5)
    # ... so it is not the loss over the real predictions,
    assert abs(book - mlm_loss(logits, labels, weights)) > 0.5
    # and it pushes the model to predict label 0 in padded slots.
    (grad,) = torch.autograd.grad(book, logits)
    assert grad[weights == 0].abs().sum() > 0
    # The proposed fix with (N, 1) weights broadcasts against the (N,) losses into N x N.
    per_slot = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), reduction="none")
    assert (per_slot * weights.reshape(-1, 1)).shape == (60, 60)


def test_fused_loss_equals_the_plain_one_with_gradients():
    torch.manual_seed(0)
    h = torch.randn(6, 10, 16, requires_grad=True)
    decoder = torch.nn.Linear(16, 300)
    _, labels, weights = example(V=300)
    plain = mlm_loss(decoder(h), labels, weights)
    grads = torch.autograd.grad(plain, [h, decoder.weight, decoder.bias])
    fused, acc = fused_mlm_loss(h, decoder, labels, weights, chunk=7)  # several chunks
    fused_grads = torch.autograd.grad(fused, [h, decoder.weight, decoder.bias])
    assert torch.allclose(plain, fused, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fused_grads))
    assert torch.allclose(acc, mlm_accuracy(decoder(h), labels, weights))


def test_fused_loss_with_padded_slots_among_its_rows_equals_the_plain_one():
    # 20 x 15 slots with 129 real ones: the fused loss decodes 130 rows (`shared_row_count`),
    # the real slots and one padded slot of weight 0, whose label -100 (Hugging Face's padding
    # label, ignored by cross_entropy) it must not read as a word
    torch.manual_seed(0)
    h = torch.randn(20, 15, 16, requires_grad=True)
    decoder = torch.nn.Linear(16, 300)
    labels = torch.randint(0, 300, (20, 15))
    weights = torch.zeros(20, 15)
    weights.view(-1)[torch.randperm(300)[:129]] = 1.0
    labels[weights == 0] = -100
    plain = mlm_loss(decoder(h), labels, weights)
    grads = torch.autograd.grad(plain, [h, decoder.weight, decoder.bias])
    fused, acc = fused_mlm_loss(h, decoder, labels, weights, chunk=64)
    fused_grads = torch.autograd.grad(fused, [h, decoder.weight, decoder.bias])
    assert torch.allclose(plain, fused, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fused_grads))
    assert not fused_grads[0][weights == 0].any()  # a padded slot's hidden state gets no gradient
    assert torch.allclose(acc, mlm_accuracy(decoder(h), labels.clamp_min(0), weights))


def test_accuracy_counts_a_tie_at_the_top_as_a_hit_in_both_paths():
    decoder = torch.nn.Linear(2, 3)
    with torch.no_grad():  # logits [1, 1, 0] for every row: words 0 and 1 tie at the top
        decoder.weight.copy_(torch.tensor([[1.0, 0], [1.0, 0], [0, 0]]))
        decoder.bias.zero_()
    h = torch.tensor([[1.0, 0]]).repeat(4, 1)[None]       # (1, 4, 2)
    labels, weights = torch.tensor([[0, 1, 2, 1]]), torch.tensor([[1.0, 1, 1, 0]])
    _, fused = fused_mlm_loss(h, decoder, labels, weights)
    plain = mlm_accuracy(decoder(h), labels, weights)
    assert fused.item() == plain.item() == pytest.approx(2 / 3)  # labels 0 and 1 hit, 2 misses, the 4th is padding


def test_fused_loss_is_exact_where_the_labels_softmax_underflows():
    # A label 200 below the top logit: its softmax is exp(-200), 0 in floats, and -log 0 would be
    # inf. The fused loss works such rows out from the logits instead, in fp32 and under bf16.
    decoder = torch.nn.Linear(1, 3)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[100.0], [-100.0], [0.0]]))
        decoder.bias.zero_()
    h = torch.ones(1, 2, 1, requires_grad=True)
    labels, weights = torch.tensor([[1, 0]]), torch.ones(1, 2)
    plain = mlm_loss(decoder(h), labels, weights)
    assert plain.item() == pytest.approx(100.0)  # (200 + 0) / 2: the second label is the top
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            fused, acc = fused_mlm_loss(h, decoder, labels, weights)
        assert fused.item() == pytest.approx(plain.item(), rel=1e-3) and acc.item() == 0.5
        grads = torch.autograd.grad(fused, [h, decoder.weight])
        assert all(torch.isfinite(g).all() for g in grads)


def test_fused_loss_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    h, decoder = torch.randn(60, 32), torch.nn.Linear(32, 500)
    labels, weights = torch.randint(0, 500, (60,)), torch.ones(60)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _ = fused_mlm_loss(h, decoder, labels, weights)
    assert fused.dtype == torch.float32
    assert abs(fused.item() - mlm_loss(decoder(h), labels, weights).item()) < 0.05


def test_nsp_and_pretrain_loss_on_a_batch(tiny):
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab))).eval()
    b = tiny[:8]
    out = net(b["tokens"], b["segments"], b["valid_lens"], b["pred_positions"])
    loss = pretrain_loss(out, b)
    assert torch.allclose(loss.nsp, F.cross_entropy(out.nsp_logits, b["nsp_labels"]))
    assert torch.allclose(loss.total, loss.mlm + loss.nsp)
    fused = pretrain_loss(net(b["tokens"], b["segments"], b["valid_lens"], b["pred_positions"],
                              mlm_logits=False), b, net.mlm.decoder)
    assert torch.allclose(fused.mlm, loss.mlm, atol=1e-5) and torch.allclose(fused.mlm_acc, loss.mlm_acc)
    assert torch.allclose(nsp_loss(out.nsp_logits, b["nsp_labels"], total=16) * 2, loss.nsp)
    assert 0 <= nsp_accuracy(out.nsp_logits, b["nsp_labels"]) <= 1


def test_row_max_of_bf16_reads_the_bits_and_equals_amax():
    torch.manual_seed(0)
    x = (torch.randn(64, 300) * 5).to(torch.bfloat16)
    x[1] = -x[1].abs() - 1                      # every number negative: the bits order them backwards
    x[2] = -0.0                                 # only -0 and negatives
    x[2, 5:] = -3.0
    x[3, 7] = float("inf")
    x[4] = 0.0                                  # +0 the largest
    x[4, ::2] = -1.0
    for rows in (x, x[:1], x[1:3]):
        assert torch.equal(_row_max(rows), rows.amax(-1))
    assert torch.equal(_row_max(x.float()), x.float().amax(-1))  # other dtypes: amax itself


def test_fused_accuracy_under_bf16_equals_the_accuracy_of_the_same_logits():
    torch.manual_seed(1)
    h, decoder = torch.randn(2, 300, 16), torch.nn.Linear(16, 40)
    with torch.no_grad():
        decoder.bias -= 10                     # many all-negative rows
    labels, weights = torch.randint(0, 40, (2, 300)), torch.ones(2, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, fused = fused_mlm_loss(h, decoder, labels, weights, chunk=64)
        plain = mlm_accuracy(decoder(h), labels, weights)
    assert fused.item() == pytest.approx(plain.item(), abs=1e-6)


@pytest.mark.parametrize("chunk", [0, -3, 2.5])
def test_fused_loss_rejects_a_chunk_that_is_not_a_positive_whole_number(chunk):
    h, decoder = torch.randn(1, 4, 8), torch.nn.Linear(8, 20)
    with pytest.raises(ValueError, match=f"chunk={chunk}.*at least 1"):
        fused_mlm_loss(h, decoder, torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4), chunk=chunk)
