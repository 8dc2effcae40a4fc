"""The torch pieces of :mod:`online_models.seqnn`: its two context encoders, the
growing row tables with a lazy row-wise Adam, and the sparse product of the item-content
bags (a constant sparse matrix whose transpose serves the backward)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionBlock", "GRUEncoder", "RowTable", "SparseMM", "sorted_unique", "sparse_csr"]

#: Adam's moment decays and epsilon (the row tables' lazy Adam)
_B1, _B2, _EPS = 0.9, 0.999, 1e-8


class GRUEncoder(nn.Module):
    """The alternative encoder: a one-layer GRU over the context (pads zeroed), last state."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.ln = nn.LayerNorm(dim)

    def forward(self, emb: torch.Tensor, ctx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = (emb[ctx] + self.pos[-ctx.shape[1]:][None]) * valid[..., None]
        out, _ = self.gru(x)
        return self.ln(out[:, -1])


class AttentionBlock(nn.Module):
    """One causal self-attention block queried at the last position (see module doc)."""

    def __init__(self, dim: int, max_len: int, n_heads: int, ffn_dim: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError("dim must be a multiple of n_heads")
        self.dim, self.n_heads = dim, n_heads
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, emb: torch.Tensor, ctx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``emb`` (U, d) item rows; ``ctx`` (B, L) indices into them, right-aligned (the
        last column always valid; padding may point anywhere); ``valid`` (B, L) bool."""
        b, length = ctx.shape
        d, h = self.dim, self.n_heads
        dh = d // h
        # Keys and values from two halves of one projection, so each is contiguous:
        # strided (B, L, h, dh) views made the attention 2-3x slower.
        wk, wv = self.kv.weight[:d], self.kv.weight[d:]
        pos = self.pos[-length:]
        k = F.embedding(ctx, F.linear(emb, wk)) + F.linear(pos, wk)[None]
        v = F.embedding(ctx, F.linear(emb, wv)) + F.linear(pos, wv)[None]
        x = F.embedding(ctx[:, -1], emb) + self.pos[-1]
        o = F.scaled_dot_product_attention(
            self.q(x).view(b, h, 1, dh),
            k.view(b, length, h, dh).transpose(1, 2),
            v.view(b, length, h, dh).transpose(1, 2),
            attn_mask=valid[:, None, None, :],
        ).reshape(b, d)
        y = self.ln1(x + self.out(o))
        return self.ln2(y + self.ffn(y))


class RowTable:
    """A growing (rows, dim) tensor with lazy row-wise Adam moments."""

    def __init__(self, rows: int, dim: int, device: torch.device) -> None:
        shape = (rows, dim) if dim else (rows,)
        self.weight = torch.zeros(shape, device=device)
        self.m = torch.zeros(shape, device=device)
        self.v = torch.zeros(shape, device=device)

    def __len__(self) -> int:
        return int(self.weight.shape[0])

    def ensure(self, needed: int) -> None:
        cap = len(self)
        if needed <= cap:
            return
        new = max(cap, 1)
        while new < needed:
            new *= 2
        for name in ("weight", "m", "v"):
            old = getattr(self, name)
            grown = old.new_zeros((new, *old.shape[1:]))
            grown[:cap] = old
            setattr(self, name, grown)

    def zero(self, rows: torch.Tensor) -> None:
        for t in (self.weight, self.m, self.v):
            t[rows] = 0.0

    def rows_of(self, rows: torch.Tensor, span: slice | None = None) -> torch.Tensor:
        """A copy of ``rows`` (``span``: the same rows as one contiguous slice, cheaper)."""
        return self.weight[span].clone() if span is not None else self.weight.index_select(0, rows)

    def adam(self, rows: torch.Tensor, grad: torch.Tensor, lr: float, step: int,
             span: slice | None = None) -> None:
        c1, c2 = 1 - _B1**step, 1 - _B2**step
        if span is not None:  # contiguous rows: update in place, no gathers
            m, v, w = self.m[span], self.v[span], self.weight[span]
            m.mul_(_B1).add_(grad, alpha=1 - _B1)
            v.mul_(_B2).addcmul_(grad, grad, value=1 - _B2)
            w.addcdiv_(m, v.div(c2).sqrt_().add_(_EPS), value=-lr / c1)
            return
        m = self.m.index_select(0, rows).mul_(_B1).add_(grad, alpha=1 - _B1)
        v = self.v.index_select(0, rows).mul_(_B2).addcmul_(grad, grad, value=1 - _B2)
        w = self.weight.index_select(0, rows)
        w.addcdiv_(m, v.div(c2).sqrt_().add_(_EPS), value=-lr / c1)
        self.m.index_copy_(0, rows, m)
        self.v.index_copy_(0, rows, v)
        self.weight.index_copy_(0, rows, w)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        names = ("weight", "m", "v")
        return {f"{prefix}.{n}": getattr(self, n).cpu().numpy().copy() for n in names}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], prefix: str, device: torch.device) -> RowTable:
        t = cls(0, 0, device)
        for n in ("weight", "m", "v"):
            setattr(t, n, torch.from_numpy(np.array(a[f"{prefix}.{n}"], np.float32)).to(device))
        return t


def sparse_csr(crow: np.ndarray, col: np.ndarray, val: np.ndarray, shape: tuple[int, ...],
         dev: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        # torch >= 2.11 on CUDA, although the checks are turned off explicitly below
        warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled",
                                UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow), torch.from_numpy(np.ascontiguousarray(col, np.int64)),
            torch.from_numpy(np.ascontiguousarray(val, np.float32)), shape,
            check_invariants=False,
        ).to(dev)


class SparseMM(torch.autograd.Function):
    """``mat @ x`` for a constant sparse ``mat`` whose transpose is given for the backward."""

    @staticmethod
    def forward(ctx: Any, mat: torch.Tensor, mat_t: torch.Tensor, x: torch.Tensor) -> Any:
        ctx.mat_t = mat_t
        return mat @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return None, None, ctx.mat_t @ grad


def sorted_unique(values: np.ndarray, size: int) -> np.ndarray:
    """``np.unique`` of non-negative ints below ``size``, through a mask instead of a sort
    (a step's rows and token buckets: thousands of values, a few thousand distinct)."""
    mask = np.zeros(size, bool)
    mask[values] = True
    return np.flatnonzero(mask)
