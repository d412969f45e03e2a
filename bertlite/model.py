"""The BERT model: embeddings, multi-head attention, encoder blocks, and the MLM and NSP heads.

Read top to bottom: config -> embeddings -> attention -> encoder block -> heads -> BERTModel.
Shapes use B = batch, T = sequence length, H = hidden size, nh = heads, hs = H / nh,
P = predicted positions per sequence, V = vocabulary size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import ConfigError, check_choice, check_range, check_types, read_json


@dataclass
class BERTConfig:
    """Sizes and architecture switches. `BERTConfig.preset(name, vocab_size)` gives known models.

    Explained in notebooks/04_attention_encoder.ipynb.
    """
    vocab_size: int = 20256
    hidden: int = 128
    ffn_hidden: int = 256
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    max_len: int = 1000           # rows of the position table (the book's 1,000; BERT's 512)
    segments: int = 2             # sentence A and sentence B
    activation: str = "relu"      # "relu" (the book) or "gelu" (BERT's exact erf GELU)
    embedding_norm: bool = False  # BERT normalises (and drops out) the summed embeddings; the book does not
    tie_decoder: bool = False     # BERT's MLM decoder reuses the token embedding matrix
    norm_eps: float = 1e-5        # PyTorch's default; BERT checkpoints use 1e-12
    init_std: float | None = None  # None: PyTorch's default init (the book); BERT: normal(0, 0.02)
    fused_attention: bool = True  # F.scaled_dot_product_attention; False: the from-scratch path
    skip_padding: bool = True     # the encoder computes on real tokens only; False: on every position, as the book

    def __post_init__(self):  # a wrong value fails here, not as an IndexError deep inside
        check_types(self)
        for name in ("vocab_size", "hidden", "ffn_hidden", "heads", "layers", "max_len"):
            check_range(self, name, 1)
        check_range(self, "dropout", 0, 1, high_open=True, why="1 drops everything")
        check_range(self, "segments", 2, why="sentence A and sentence B")
        check_range(self, "norm_eps", 0, low_open=True)
        check_range(self, "init_std", 0, low_open=True)
        check_choice(self, "activation", tuple(ACTIVATIONS))
        if self.hidden % self.heads:
            raise ConfigError(f"--hidden {self.hidden} is not divisible by --heads {self.heads}: "
                              "each head gets hidden / heads dimensions")

    @staticmethod
    def preset(name: str, vocab_size: int, **overrides) -> "BERTConfig":
        """"d2l" (the book's model) or "bert-tiny/mini/small/base" (the original architecture)."""
        bert = dict(activation="gelu", embedding_norm=True, tie_decoder=True, norm_eps=1e-12,
                    init_std=0.02, dropout=0.1, max_len=512)
        sizes = {"bert-tiny": (128, 2, 2), "bert-mini": (256, 4, 4), "bert-small": (512, 4, 8),
                 "bert-base": (768, 12, 12)}  # hidden, layers, heads (Turc et al. 2019 sizes)
        if name == "d2l":
            config = BERTConfig(vocab_size=vocab_size)
        elif name in sizes:
            h, layers, heads = sizes[name]
            config = BERTConfig(vocab_size=vocab_size, hidden=h, ffn_hidden=4 * h, heads=heads,
                                layers=layers, **bert)
        else:
            raise ConfigError(f"--preset: unknown preset {name!r}; choose d2l or one of "
                              f"{', '.join(sizes)}")
        return replace(config, **overrides)

    @classmethod
    def from_file(cls, path, section=None) -> "BERTConfig":
        """The model config in a `config.json` (or its `section`), with errors naming the file."""
        obj = read_json(path, [section] if section else [])
        try:
            return cls(**(obj[section] if section else obj))
        except (TypeError, ValueError) as e:  # an unknown key, or a value out of range
            raise ValueError(f"{path}: {e}: not a bertlite model config, or edited") from None

    def to_dict(self) -> dict:
        return asdict(self)


class Dropout(nn.Module):
    """Inverted dropout written out: zero each element with probability p and scale the others by
    1 / (1 - p), so the expected value is unchanged. Same as `nn.Dropout`, but quicker on the CPU,
    where drawing random numbers is the slow part: one 64-bit draw gives four 16-bit numbers, so p
    is rounded to a multiple of 1/65536 (0.2 becomes 0.199997).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x, real: RealTokens | None = None):
        """x of any shape; or the (N, H) rows of the real tokens of a padded batch, with `real`
        saying where they sit: then the mask is drawn for the whole (B, T, H) grid and its real
        rows are used, so skipping the padding leaves every random number where it was."""
        if not self.training or self.p == 0:
            return x
        shape = x.shape if real is None else (real.B, real.T, x.shape[-1])
        return x * keep_mask(shape, self.p, x.dtype, x.device, real)


def keep_mask(shape, p: float, dtype=torch.float32, device=None, real=None) -> torch.Tensor:
    """Tensor of `shape`: 0 with probability p (rounded to k / 65536), else 65536 / (65536 - k).
    With `real` (a `RealTokens`), only the real tokens' rows of the (B, T, H) mask."""
    n, k = math.prod(shape), round(p * 65536)
    # random_(-2**63, None): every 64-bit pattern equally likely, straight from the generator
    # (a bounded range costs a modulo per draw: a quarter more time)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    pieces = bits.view(torch.int16)[:n]  # four numbers per draw, each uniform on -32768 ... 32767
    keep = (pieces >= k - 32768).view(shape)  # false for the k lowest values: probability k / 65536
    if real is not None:
        keep = real.rows(keep)           # rows picked as booleans: a quarter of the bytes of floats
    # 0 or 1, times the scale: torch.where(keep, scale, 0.0)'s numbers in a third of its CPU time.
    # Read as bytes (bool is stored as bytes 0/1): torch converts bytes to floats several times
    # faster than booleans on the CPU. Bytes times a 0-dimensional `dtype` tensor come out as
    # `dtype` in one pass (no 0/1 floats written first).
    scale = torch.tensor(65536 / (65536 - k), dtype=dtype, device=device)
    return keep.view(torch.uint8) * scale


class Embeddings(nn.Module):
    """Token + segment + learned position embeddings (then LayerNorm and dropout for BERT)."""

    def __init__(self, c: BERTConfig):
        super().__init__()
        self.token = nn.Embedding(c.vocab_size, c.hidden)
        self.segment = nn.Embedding(c.segments, c.hidden)
        self.position = nn.Embedding(c.max_len, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=c.norm_eps) if c.embedding_norm else nn.Identity()
        self.dropout = Dropout(c.dropout if c.embedding_norm else 0.0)

    def forward(self, tokens, segments, real: RealTokens | None = None):
        """(B, T, H); or with `real`, only the real tokens' (N, H) rows (see `RealTokens`)."""
        if real is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)  # (T,): broadcast
            x = self.token(tokens) + (self.segment(segments) + self.position(positions))
        else:  # the real tokens' ids, and their segments and positions, flattened
            T, H = real.T, self.token.embedding_dim
            # The sum of every segment's and position's vectors, a small (segments * T, H) table:
            # one lookup in it instead of two lookups, and of two gradients summed row by row
            both = (self.segment.weight[:, None] + self.position.weight[None, :T]).reshape(-1, H)
            segment_position = segments.reshape(-1)[real.index] * T + real.index % T
            x = self.token(tokens.reshape(-1)[real.index]) + F.embedding(segment_position, both)
        return self.dropout(self.norm(x), real)


def key_padding_mask(valid_lens, T: int):
    """(B, 1, 1, T) booleans: True where a key position is real (< valid length), False on padding."""
    return (torch.arange(T, device=valid_lens.device) < valid_lens[:, None])[:, None, None, :]


def shared_row_count(n: int) -> int:
    """n rounded up to 7 significant bits (at most 1/64 more): batches whose numbers of real tokens
    differ by a little share one row count. oneDNN, which runs bf16 matrix products on the CPU,
    compiles a kernel for each new shape, and many of a step's products have shapes that depend
    on the row count: a few shared row counts compile once, instead of every batch compiling its own
    (benchmarks/step_vs_commit.py --batches stream shows the difference)."""
    shift = max(n.bit_length() - 7, 0)
    return -(-n >> shift) << shift


def true_first(flags):
    """(index, n) for a flat boolean tensor with n True entries: the positions of those n, in
    order, then of the first False ones, `shared_row_count(n)` positions in all (or all of them)."""
    n = int(flags.sum())
    index = torch.argsort((~flags).byte(), stable=True)  # True first, each kind in its order
    return index[:min(shared_row_count(n), len(flags))], n


class RealTokens(NamedTuple):
    """Where the real tokens of a padded (B, T) batch sit. Only attention needs the (B, T) grid:
    every other layer works token by token, so the encoder can carry just the real tokens as
    (N, H) rows and skip the padding (a quarter of WikiText-2's 64-position rows). Every real
    token gets the same numbers either way, dropout included; padded positions come out as zeros
    (so does every position of a row of valid length 0, which has no real token at all).
    The N rows are the n real tokens and then a few padded positions, up to N =
    `shared_row_count(n)`: computed like the others, they reach no real token (attention masks
    them as keys) and no output (`grid` leaves them out), so their gradients are zeros.
    Explained in notebooks/04_attention_encoder.ipynb.
    """
    index: torch.Tensor  # (N,) flat positions b * T + t: the n real tokens', then padded ones
    B: int
    T: int
    n: int  # real tokens

    @staticmethod
    def of(valid_lens, T: int) -> "RealTokens | None":
        """Where the real tokens are, or None when there is no padding to skip."""
        real = key_padding_mask(valid_lens, T)[:, 0, 0].reshape(-1)  # the rule attention masks by
        index, n = true_first(real)
        return None if n == len(real) else RealTokens(index, len(valid_lens), T, n)

    def rows(self, grid):
        """(B, T, d) -> (N, d): the real tokens' rows (and the few padded ones after them)."""
        return grid.reshape(self.B * self.T, -1).index_select(0, self.index)

    def grid(self, rows):
        """(N, d) -> (B, T, d): the real tokens' rows in place, zeros at the padded positions."""
        out = rows.new_zeros(self.B * self.T, rows.shape[-1])
        out.index_copy_(0, self.index[:self.n], rows[:self.n])  # in place: no copy of the zeros
        return out.view(self.B, self.T, -1)

    def heads(self, qkv, heads: int):
        """(N, 3H) rows of queries, keys and values -> q, k, v, each (B, nh, T, hs), contiguous
        (as the batched products want them), with zeros at the positions that are not rows."""
        return _RowsToHeads.apply(qkv, self, heads)

    def rows_of_heads(self, out):
        """(B, nh, T, hs) -> (N, H): the real tokens' rows, heads side by side."""
        return _HeadsToRows.apply(out, self)

    def head_rows(self, parts: int, heads: int, padding: bool = False):
        """Row numbers for moving head vectors. Viewed as rows of hs numbers, a (parts, B, nh,
        T, hs) tensor keeps the vector of head `head` of part `part` (q, k or v) at position t of
        sequence b in row ((part * B + b) * nh + head) * T + t. Returns that row for every vector
        of the real tokens, in the order an (N, parts * nh * hs) input lists them: token by token,
        then part, then head (row i of `qkv.view(-1, hs)` goes to row `head_rows(...)[i]`). With
        `padding`: the rows of the positions that are not among the N (padding) instead."""
        index = self.index
        if padding:
            padded = torch.ones(self.B * self.T, dtype=torch.bool, device=index.device)
            index = padded.index_fill_(0, index, False).nonzero()[:, 0]
        b, t = index // self.T, index % self.T
        part = torch.arange(parts, device=index.device)[:, None]
        start = (part * self.B * heads + torch.arange(heads, device=index.device)) * self.T
        return ((b * heads * self.T + t)[:, None] + start.reshape(-1)).reshape(-1)


def _words(rows):
    """(n, d) rows read as 64-bit words (the same bytes, e.g. 16 words for 64 bf16 numbers) where
    they allow it, else as they are. PyTorch's CPU kernels that copy rows by index work number by
    number: on words, a row of bf16 is copied in a quarter of the steps."""
    if (rows.shape[1] * rows.element_size() % 8 or not rows.is_contiguous()
            or rows.storage_offset() * rows.element_size() % 8):
        return rows
    return rows.view(torch.int64)


class _RowsToHeads(torch.autograd.Function):
    """`RealTokens.heads`: each real token's 3 * nh vectors of hs numbers copied to their rows,
    zeros written at the padding only; backward gathers the rows of each gradient. The plain
    route (the grid, split into q, k and v, each viewed as heads) leaves q, k and v strided, so
    the products copy each of them, and backward glues their gradients together in one more copy."""

    @staticmethod
    def forward(ctx, qkv, real: RealTokens, heads: int):
        hs = qkv.shape[1] // (3 * heads)
        out = qkv.new_empty(3 * real.B * heads * real.T, hs)
        _words(out).index_copy_(0, real.head_rows(3, heads), _words(qkv.view(-1, hs)))
        _words(out).index_fill_(0, real.head_rows(3, heads, padding=True), 0)
        ctx.save_for_backward(real.head_rows(1, heads))  # where one of q, k, v keeps its rows
        return out.view(3, real.B, heads, real.T, hs).unbind(0)  # q, k, v

    @staticmethod
    def backward(ctx, *grads):  # q's, k's and v's gradients, each (B, nh, T, hs), or None
        rows, = ctx.saved_tensors
        given = next(g for g in grads if g is not None)
        _, heads, _, hs = given.shape
        parts = [given.new_zeros(len(rows), hs) if g is None             # each (N * nh, hs)
                 else _words(g.reshape(-1, hs)).index_select(0, rows).view(g.dtype) for g in grads]
        return torch.cat([part.view(-1, heads * hs) for part in parts], 1), None, None  # (N, 3H)


class _HeadsToRows(torch.autograd.Function):
    """`RealTokens.rows_of_heads`: one gather of rows forward, one copy to rows backward."""

    @staticmethod
    def forward(ctx, out, real: RealTokens):
        heads, hs = out.shape[1], out.shape[3]
        rows = real.head_rows(1, heads)
        ctx.save_for_backward(rows)
        ctx.real, ctx.shape = real, out.shape
        picked = _words(out.reshape(-1, hs)).index_select(0, rows).view(out.dtype)
        return picked.view(-1, heads * hs)  # (N, H)

    @staticmethod
    def backward(ctx, grad):
        rows, = ctx.saved_tensors
        B, heads, T, hs = ctx.shape
        out = grad.new_empty(B * heads * T, hs)
        _words(out).index_copy_(0, rows, _words(grad.reshape(-1, hs)))
        _words(out).index_fill_(0, ctx.real.head_rows(1, heads, padding=True), 0)
        return out.view(ctx.shape), None


class _Scores(torch.autograd.Function):
    """q @ k.T, as autograd would compute it, except k's gradient: autograd gives (q.T @ g).T, a
    transposed view, which `RealTokens.heads`'s backward must copy number by number before it can
    gather rows; g.T @ q is the same product written in k's own layout."""

    @staticmethod
    def forward(ctx, q, k):
        ctx.save_for_backward(q, k)
        return q @ k.transpose(-2, -1)

    @staticmethod
    def backward(ctx, g):
        q, k = ctx.saved_tensors
        return g @ k, g.transpose(-2, -1) @ q


class MultiHeadAttention(nn.Module):
    """Self-attention with `heads` heads; keys at or past each sequence's valid length are masked.

    Two paths that give the same numbers (tested to 1e-5): the scaled dot products written out
    (which keeps `attention_weights` for plotting) and PyTorch's fused kernel (faster, the default).
    Explained in notebooks/04_attention_encoder.ipynb.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, fused: bool = True):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads, self.fused = heads, fused
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(hidden, hidden) for _ in range(4))
        self.dropout = Dropout(dropout)
        self.attention_weights = None  # (B, nh, T, T), filled by the from-scratch path

    def split_heads(self, x):
        B, T, H = x.shape
        return x.view(B, T, self.heads, H // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, valid_lens=None, real: RealTokens | None = None):
        """x: (B, T, H); or (N, H), the rows of the real tokens only, with `real` saying where
        they sit in the batch. Returns the same shape as x."""
        H = x.shape[-1]
        p = self.dropout.p if self.training else 0.0
        # On the CPU, the fused kernel has no dropout: with p > 0 it falls back to a slower
        # version of the written-out path below, so we take that path ourselves.
        fused = self.fused and (p == 0 or x.is_cuda)
        # Queries, keys and values from one product with the three weights stacked: x is read once,
        # and backward computes x's gradient in one product instead of adding up three. The
        # written-out path divides the scores by sqrt(hs): dividing W_q and b_q instead gives the
        # queries already divided, and spares a pass over the (B, nh, T, T) scores each way
        # (exact when sqrt(hs) is a power of 2, as for hs = 64 in every preset).
        scale = 1.0 if fused else 1 / math.sqrt(H // self.heads)
        weight = torch.cat([self.W_q.weight * scale, self.W_k.weight, self.W_v.weight])  # (3H, H)
        bias = torch.cat([self.W_q.bias * scale, self.W_k.bias, self.W_v.bias])
        qkv = F.linear(x, weight, bias)                           # (B, T, 3H) or (N, 3H)
        if real is not None:  # attention compares positions: it needs the (B, T) grid
            if valid_lens is None:  # unmasked, the zero-filled padding would take weight
                raise ValueError("MultiHeadAttention: real tokens given without valid_lens; "
                                 "pass the valid lengths that `real` was made from")
            B, T = real.B, real.T
            q, k, v = real.heads(qkv, self.heads)     # each (B, nh, T, hs), zeros at most padding
        else:
            B, T, _ = qkv.shape
            q, k, v = (self.split_heads(t) for t in qkv.split(H, dim=-1))  # (B, nh, T, hs)
        mask = None if valid_lens is None else key_padding_mask(valid_lens, T)  # (B, 1, 1, T)
        if fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            scores = _Scores.apply(q, k)             # (B, nh, T, T), q already / sqrt(hs)
            if mask is not None:  # the smallest float, not -inf: a fully masked row stays finite
                # In place: one fewer (B, nh, T, T) tensor written. On the real tokens, autograd
                # need not see it: the softmax gives masked keys exactly 0, so its backward gives
                # them 0 gradient already (rows with no real key at all are padding, discarded).
                with torch.no_grad() if real is not None else nullcontext():
                    scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            self.attention_weights = weights.detach()
            out = self.dropout(weights) @ v                                 # (B, nh, T, hs)
        if real is not None:
            return self.W_o(real.rows_of_heads(out))                        # (N, H)
        return self.W_o(out.transpose(1, 2).reshape(B, T, H))               # (B, T, H)


class PositionWiseFFN(nn.Module):
    """The same two-layer network applied at every position."""

    def __init__(self, hidden: int, ffn_hidden: int, activation: str):
        super().__init__()
        self.dense1, self.dense2 = nn.Linear(hidden, ffn_hidden), nn.Linear(ffn_hidden, hidden)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x):
        return self.dense2(self.activation(self.dense1(x)))


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # F.gelu is the exact (erf) GELU of BERT


class EncoderBlock(nn.Module):
    """Post-LayerNorm Transformer block: attention -> add & norm -> FFN -> add & norm.

    Explained in notebooks/04_attention_encoder.ipynb.
    """

    def __init__(self, c: BERTConfig):
        super().__init__()
        self.attention = MultiHeadAttention(c.hidden, c.heads, c.dropout, c.fused_attention)
        self.norm1 = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.ffn = PositionWiseFFN(c.hidden, c.ffn_hidden, c.activation)
        self.norm2 = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.dropout = Dropout(c.dropout)

    def forward(self, x, valid_lens=None, real: RealTokens | None = None):
        """x: (B, T, H), or the real tokens' (N, H) rows (see `RealTokens`)."""
        x = self.norm1(x + self.dropout(self.attention(x, valid_lens, real), real))
        return self.norm2(x + self.dropout(self.ffn(x), real))


class MaskLM(nn.Module):
    """The MLM head: gather the hidden states at the predicted positions only, then
    dense -> activation -> LayerNorm -> decoder to vocabulary logits.

    Explained in notebooks/05_heads_and_loss.ipynb.
    """

    def __init__(self, c: BERTConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden, c.hidden)
        self.activation = ACTIVATIONS[c.activation]
        self.norm = nn.LayerNorm(c.hidden, eps=c.norm_eps)
        self.decoder = nn.Linear(c.hidden, c.vocab_size)  # weight tied to the embeddings for BERT

    def hidden(self, x, pred_positions):
        """(B, P, H): the transformed states at the predicted positions, before the decoder."""
        rows = torch.arange(x.shape[0], device=x.device)[:, None]  # (B, 1)
        x = x[rows, pred_positions]                                # (B, P, H): predicted positions
        return self.norm(self.activation(self.dense(x)))

    def forward(self, x, pred_positions):
        return self.decoder(self.hidden(x, pred_positions))        # (B, P, V)


class BERTOutput(NamedTuple):
    encoded: torch.Tensor      # (B, T, H) contextual representation of every token (zeros at padding)
    mlm_logits: torch.Tensor | None  # (B, P, V) at the predicted positions, or None
    nsp_logits: torch.Tensor   # (B, 2): [not next, is next]
    pooled: torch.Tensor       # (B, H) tanh(dense(<cls>)), the input of the NSP head
    mlm_hidden: torch.Tensor | None = None  # (B, P, H) before the decoder, with mlm_logits=False


class BERTModel(nn.Module):
    """BERT: embeddings, `layers` encoder blocks, an MLM head and an NSP head.

    `forward(tokens, segments, valid_lens, pred_positions)` returns a `BERTOutput`. NSP label 1
    means "B follows A", as in the book.
    Explained in notebooks/04_attention_encoder.ipynb and notebooks/05_heads_and_loss.ipynb.
    """

    def __init__(self, config: BERTConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.layers))
        self.pooler = nn.Linear(config.hidden, config.hidden)  # followed by tanh
        self.mlm = MaskLM(config)
        self.nsp = nn.Linear(config.hidden, 2)
        if config.init_std is not None:
            self.apply(self._init_weights)
        if config.tie_decoder:
            self.mlm.decoder.weight = self.embeddings.token.weight

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    def encode(self, tokens, segments=None, valid_lens=None):
        """(B, T, H) hidden states of the last encoder block; zeros past each valid length
        (unless `config.skip_padding` is False: then whatever the padded positions computed)."""
        self._check(tokens, segments, valid_lens)
        return self._encode(tokens, segments, valid_lens)

    def _encode(self, tokens, segments, valid_lens):
        skip = valid_lens is not None and self.config.skip_padding
        real = RealTokens.of(valid_lens, tokens.shape[1]) if skip else None
        # (B, T, H), or the real tokens' (N, H) rows: the blocks then skip the padding
        x = self.embeddings(tokens, torch.zeros_like(tokens) if segments is None else segments, real)
        device = x.device.type
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
            # Autocast runs the products in bf16 but leaves the rest as it comes: from the fp32
            # embeddings, the residual stream and every LayerNorm would stay fp32 and be copied
            # to bf16 again before each product. bf16 has fp32's range, so the whole encoder can
            # run in it (fp16, which has not, stays as autocast leaves it).
            x = x.bfloat16()
        for block in self.blocks:
            x = block(x, valid_lens, real)
        return x if real is None else real.grid(x)  # (B, T, H), zeros at the padding

    def forward(self, tokens, segments=None, valid_lens=None, pred_positions=None,
                mlm_logits: bool = True) -> BERTOutput:
        """`mlm_logits=False` stops the MLM head before its decoder (for `fused_mlm_loss`)."""
        self._check(tokens, segments, valid_lens, pred_positions)
        encoded = self._encode(tokens, segments, valid_lens)
        logits = hidden = None
        if pred_positions is not None:
            hidden = self.mlm.hidden(encoded, pred_positions)
            logits = self.mlm.decoder(hidden) if mlm_logits else None
        pooled = torch.tanh(self.pooler(encoded[:, 0]))  # the <cls> position
        return BERTOutput(encoded, logits, self.nsp(pooled), pooled, None if mlm_logits else hidden)

    def _check(self, tokens, segments, valid_lens, pred_positions=None):
        """Shapes, then the range of every id tensor. Unchecked, an id past its embedding table
        is "index out of range in self" (a device-side assert on a GPU) and a negative position
        silently wraps around. One min and max per tensor, and one sync for all of them."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be a (B, T) integer tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}: add a batch dimension with tokens[None]")
        B, T = tokens.shape
        if B == 0 or T == 0:
            raise ValueError(f"tokens is empty, shape {(B, T)}: give at least one sequence of "
                             "at least one token")
        if T > self.config.max_len:
            raise ValueError(f"sequences of {T} tokens exceed the position table "
                             f"(config.max_len={self.config.max_len})")
        if segments is not None and segments.shape != tokens.shape:
            raise ValueError(f"segments {tuple(segments.shape)} must match tokens {(B, T)}")
        if valid_lens is not None and valid_lens.shape != (B,):
            raise ValueError(f"valid_lens must be ({B},), got {tuple(valid_lens.shape)}")
        if pred_positions is not None and (pred_positions.dim() != 2 or len(pred_positions) != B):
            raise ValueError(f"pred_positions must be (B, P) with B={B}, "
                             f"got {tuple(pred_positions.shape)}")
        c = self.config
        limits = {"tokens": (tokens, c.vocab_size, "ids of the model's vocabulary (vocab_size)"),
                  "segments": (segments, c.segments, "segment ids of the model (segments)"),
                  "valid_lens": (valid_lens, T + 1, f"lengths of sequences of {T} tokens"),
                  "pred_positions": (pred_positions, T, f"positions in sequences of {T} tokens")}
        limits = {k: v for k, v in limits.items() if v[0] is not None and v[0].numel()}
        ranges = torch.stack([torch.stack(torch.aminmax(t.long())) for t, _, _ in limits.values()])
        for (name, (_, limit, what)), (low, high) in zip(limits.items(), ranges.tolist()):
            if low < 0 or high >= limit:
                raise ValueError(f"{name} holds {low if low < 0 else high}: must be 0..{limit - 1}, "
                                 f"the {what}")


@contextmanager
def evaluating(net: nn.Module):
    """Eval mode (dropout off) without gradients for the `with` block, then the mode it had:
    what every use of a trained model needs, and what the book's "crane" demo forgets."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        net.train(was_training)


def get_bert_encoding(net: BERTModel, vocab, tokens_a, tokens_b=None):
    """Contextual representations (T, H) of `<cls> a <sep> [b <sep>]`, in eval mode without
    gradients (the book's demo forgets both, so dropout changes its numbers on every run).
    `vocab` is any tokenizer (a word-level `Vocab` or WordPiece); `tokens_a` and `tokens_b` are
    lists of its tokens, or texts that it tokenizes.

    Explained in notebooks/06_pretraining.ipynb and notebooks/10_real_bert.ipynb.
    """
    from .data import tokens_and_segments
    tokens_a, tokens_b = (vocab.tokenize(t) if isinstance(t, str) else t for t in (tokens_a, tokens_b))
    tokens, segments = tokens_and_segments(tokens_a, tokens_b, vocab.cls_token, vocab.sep_token)
    device = next(net.parameters()).device
    with evaluating(net):
        ids = torch.tensor([vocab.convert_tokens_to_ids(tokens)], device=device)
        return net.encode(ids, torch.tensor([segments], device=device))[0]


def count_parameters(net: nn.Module) -> int:
    """Number of distinct trainable parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
