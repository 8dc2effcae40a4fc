"""The snapshot state of :class:`~online_models.seqnn.SeqNN`: :func:`get_state` writes
the id tables, row tables, item bookkeeping, user sequences, pending admissions, the
replay ring, the generator, the block and its optimiser (and content tokens and
features, when set) as named numeric arrays with the counters in the meta;
:func:`load_state` reads them back into a model built from the saved hyperparameters
(:meth:`SeqNN.from_state`). The array names and meta keys are the snapshot format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from online_models.base import IdIndex, ModelState, grow_rows, pack_strings, unpack_strings
from online_models.content import ItemFeatures
from online_models.seqnn_layers import RowTable

if TYPE_CHECKING:
    from online_models.seqnn import SeqNN

__all__ = ["get_state", "load_state"]


def get_state(m: SeqNN) -> ModelState:
    seq_len = np.asarray([len(s) for s in m._seqs], np.int64)
    flat = np.asarray([r for s in m._seqs for r in s], np.int64)
    pd, po = pack_strings(list(m._pending))
    arrays: dict[str, np.ndarray] = {
        **m.users.to_arrays("users"),
        **m.items.to_arrays("items"),
        **m._ids.to_arrays("ids"),
        **m._bias.to_arrays("bias"),
        "alive": m._alive.astype(np.uint8),
        "last_seen": m._last_seen.copy(),
        "count": m._count.copy(),
        "user_seen": m._user_seen.copy(),
        "seqs.lengths": seq_len,
        "seqs.rows": flat,
        "pending.data": pd,
        "pending.offsets": po,
        "pending.values": np.asarray(list(m._pending.values()), np.float64).reshape(-1, 2),
        "replay.ctx": m._r_ctx.copy(),
        "replay.tgt": m._r_tgt.copy(),
        "replay.w": m._r_w.copy(),
        "generator": m._gen.get_state().numpy().copy(),
    }
    for name, p in m._block.state_dict().items():
        arrays[f"block.{name}"] = p.detach().cpu().numpy().copy()
    for pid, st in m._opt.state_dict()["state"].items():
        for key, val in st.items():
            arrays[f"opt.{pid}.{key}"] = torch.as_tensor(val).cpu().numpy().copy()
    if m._tokens is not None:
        arrays.update(m._tokens.to_arrays("tokens"))
    if m.features is not None:
        arrays.update(m.features.to_arrays("features"))
    meta: dict[str, Any] = {
        "class": m.name,
        "params": m.get_params(),
        "step": m._step,
        "steps_total": m.steps_total,
        "examples_total": m.examples_total,
        "replay_pos": m._r_pos,
        "replay_len": m._r_len,
        "watermark": None if not np.isfinite(m._watermark) else m._watermark,
        "has_features": m.features is not None,
    }
    return ModelState(arrays=arrays, meta=meta)


def load_state(m: SeqNN, state: ModelState) -> None:
    """Load :func:`get_state`'s arrays and counters into ``m`` (built from the saved params)."""
    a = dict(state.arrays)
    dev = m._dev
    m.users = IdIndex.from_arrays(a, "users")
    m.items = IdIndex.from_arrays(a, "items")
    m._ids = RowTable.from_arrays(a, "ids", dev)
    m._bias = RowTable.from_arrays(a, "bias", dev)
    m._alive = np.asarray(a["alive"]).astype(bool)
    m._last_seen = np.array(a["last_seen"], np.float64)
    m._count = np.array(a["count"], np.float64)
    m._user_seen = np.array(a["user_seen"], np.float64)
    flat = np.asarray(a["seqs.rows"], np.int64).tolist()
    pos = 0
    m._seqs = []
    for ln in np.asarray(a["seqs.lengths"], np.int64).tolist():
        m._seqs.append(flat[pos : pos + ln])
        pos += ln
    keys = unpack_strings(a["pending.data"], a["pending.offsets"])
    m._pending = {k: list(v) for k, v in zip(keys, a["pending.values"].tolist(), strict=True)}
    m._r_ctx = np.array(a["replay.ctx"], np.int64)
    m._r_tgt = np.array(a["replay.tgt"], np.int64)
    m._r_w = np.array(a["replay.w"], np.float32)
    m._r_pos = int(state.meta["replay_pos"])
    m._r_len = int(state.meta["replay_len"])
    m._step = int(state.meta["step"])
    m.steps_total = int(state.meta["steps_total"])
    m.examples_total = int(state.meta.get("examples_total", 0))
    wm = state.meta["watermark"]
    m._watermark = -np.inf if wm is None else float(wm)
    m._gen.set_state(torch.from_numpy(np.array(a["generator"], np.uint8)))
    m._block.load_state_dict(
        {k: torch.from_numpy(np.array(a[f"block.{k}"])) for k in m._block.state_dict()}
    )
    opt_sd = m._opt.state_dict()
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key in a:
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            val = torch.from_numpy(np.array(a[key]))
            opt_state.setdefault(int(pid), {})[name] = val if name == "step" else val.to(dev)
    opt_sd["state"] = opt_state
    m._opt.load_state_dict(opt_sd)
    if "tokens.weight" in a:
        m._tokens = RowTable.from_arrays(a, "tokens", dev)
    if state.meta.get("has_features"):
        m.features = ItemFeatures.from_arrays(a, "features")
        m._tok_idx, m._tok_w = m.features.padded(m.items.ids)
        m._feat_version = m.features.version
    m._tok_idx = grow_rows(m._tok_idx, len(m._alive), 0)
    m._tok_w = grow_rows(m._tok_w, len(m._alive), 0.0)
