"""``lookm``: LOOK-M (Wan et al., EMNLP'24 Findings) — text-prior KV-cache eviction with merging, after prefill.

The prefill runs on every token (prefill FLOPs 1.00x, outputs of the prefill unchanged); what shrinks is the
KV cache that decoding reads, so Look-M saves decode memory and decode attention, not prefill compute. Per
decoder layer, right after the layer ran on the prefill:
  1. score every cached entry by the attention it accumulates over all prefill query rows (H2O-style column
     sums of that layer's causal softmax with RoPE, summed over heads), computed block by block
     (``attention_column_sums``: O(H x block x N) memory, never N x N);
  2. text prior: every text entry (everything that is not a visual token, the image-newline included) stays;
  3. of the N_v visual entries keep the last ``floor(recent_ratio x N_v)`` (recent window) and the top
     ``floor(hh_ratio x N_v)`` of the others by score (heavy hitters) — the kit reads both ratios on the
     visual entries, so the defaults hh = recent = 0.1 keep 20% of the visual KV, PruneVid's "Look-M 20%";
  4. merge (``merge``): every evicted visual entry joins the kept entry whose key is most similar (cosine,
     per KV head), and the kept slot becomes ``(kept + mean(evicted))/2`` (``"pivotal"``, the averaging of the
     code), ``mean(kept, evicted...)`` (``"average"``), or nothing happens (``"none"``: plain eviction).
Every layer keeps the same number of entries, so the cache stays a regular DynamicCache. ``retain`` (matched
budget, a KV budget) sets ``hh_ratio = retain - recent_ratio`` (recent window capped at ``retain``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import _check_int, _check_number
from ..llm import CachePolicy, cached_keys, rope_queries
from ..prune import attention_column_sums, count_for_ratio, top_k_sorted
from .base import ConfigMixin, Method, SequenceLayout

MERGES = ("pivotal", "average", "none")


@dataclass
class LookMConfig(ConfigMixin):
    hh_ratio: float = 0.1
    recent_ratio: float = 0.1
    merge: str = "pivotal"
    block: int = 256
    retain: Optional[float] = None

    def __post_init__(self):
        self.hh_ratio = _check_number("hh_ratio", self.hh_ratio, 0.0, 1.0)
        self.recent_ratio = _check_number("recent_ratio", self.recent_ratio, 0.0, 1.0)
        self.block = _check_int("block", self.block, 1)
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)

    @property
    def ratios(self) -> tuple:
        """(hh_ratio, recent_ratio) after a matched budget."""
        if self.retain is None:
            return self.hh_ratio, self.recent_ratio
        recent = min(self.recent_ratio, self.retain)
        return self.retain - recent, recent


def lookm_keep(scores: torch.Tensor, n_heavy: int, n_recent: int) -> torch.Tensor:
    """(N_v,) visual scores -> sorted kept visual indices: the last ``n_recent`` plus the top ``n_heavy`` of
    the others."""
    n = scores.numel()
    n_recent = min(n_recent, n)
    recent = torch.arange(n - n_recent, n, device=scores.device)
    heavy = top_k_sorted(scores[: n - n_recent], n_heavy)
    return torch.cat([heavy, recent])


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, evicted: torch.Tensor,
                  mode: str = "pivotal", block: int = 256):
    """Merge evicted entries into their most similar kept entry, per KV head.

    keys/values (Hkv, N, d); kept/evicted index tensors. Returns the (Hkv, n_kept, d) keys and values.
    Similarities are formed ``block`` evicted entries at a time.
    """
    k_kept, v_kept = keys[:, kept].float(), values[:, kept].float()
    if mode == "none" or evicted.numel() == 0:
        return k_kept.to(keys.dtype), v_kept.to(values.dtype)
    kn = F.normalize(k_kept, dim=-1)
    h, n_kept, d = k_kept.shape
    sum_k = torch.zeros_like(k_kept)
    sum_v = torch.zeros_like(v_kept)
    count = torch.zeros(h, n_kept, device=keys.device)
    for start in range(0, evicted.numel(), block):
        ev = evicted[start:start + block]
        ke, ve = keys[:, ev].float(), values[:, ev].float()
        target = (F.normalize(ke, dim=-1) @ kn.transpose(1, 2)).argmax(dim=-1)          # (Hkv, b)
        sum_k.scatter_add_(1, target[..., None].expand(-1, -1, d), ke)
        sum_v.scatter_add_(1, target[..., None].expand(-1, -1, ve.shape[-1]), ve)
        count.scatter_add_(1, target, torch.ones_like(target, dtype=count.dtype))
    hit = (count > 0)[..., None]
    c = count.clamp_min(1)[..., None]
    if mode == "pivotal":
        new_k = torch.where(hit, (k_kept + sum_k / c) / 2, k_kept)
        new_v = torch.where(hit, (v_kept + sum_v / c) / 2, v_kept)
    elif mode == "average":
        new_k, new_v = (k_kept + sum_k) / (1 + count[..., None]), (v_kept + sum_v) / (1 + count[..., None])
    else:
        raise ValueError(f"unknown merge {mode!r}")
    return new_k.to(keys.dtype), new_v.to(values.dtype)


class LookMCachePolicy(CachePolicy):
    """Evict + merge each layer's visual KV right after that layer's prefill (see the module doc)."""

    def __init__(self, visual: slice, n_heavy: int, n_recent: int, merge: str, block: int):
        self.visual, self.n_heavy, self.n_recent, self.merge, self.block = visual, n_heavy, n_recent, merge, block
        self.kept: Optional[torch.Tensor] = None
        self.info = {"kv_budget_visual": n_heavy + n_recent, "saves": "decode memory (not prefill FLOPs)"}

    def after_prefill_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        if cache is None:
            return
        lyr = cache.layers[i]
        n = lyr.keys.shape[-2]
        if hidden_in.shape[1] != n:                      # only a fresh prefill (empty cache before it)
            return
        rows = torch.arange(n, device=hidden_in.device)
        with torch.no_grad():
            q = rope_queries(layer, hidden_in, rows, kwargs.get("position_embeddings"))     # (H, N, d)
            k = cached_keys(cache, i, q.shape[0])
            scores = attention_column_sums(q, k, scaling=layer.self_attn.scaling, query_positions=rows,
                                           block=self.block).sum(0)                        # (N,)
            vis = torch.arange(self.visual.start, self.visual.stop, device=scores.device)
            kept_vis = vis[lookm_keep(scores[self.visual], self.n_heavy, self.n_recent)]
            keep = torch.ones(n, dtype=torch.bool, device=scores.device)
            keep[vis] = False
            keep[kept_vis] = True
            kept = keep.nonzero().squeeze(1)
            evicted = (~keep).nonzero().squeeze(1)
            new_k, new_v = merge_evicted(lyr.keys[0], lyr.values[0], kept.to(lyr.keys.device),
                                         evicted.to(lyr.keys.device), self.merge, self.block)
        lyr.keys, lyr.values = new_k[None].contiguous(), new_v[None].contiguous()
        self.kept = kept

    def kept_positions(self) -> Optional[torch.Tensor]:
        return self.kept


class LookMMethod(Method):
    name = "lookm"
    config_class = LookMConfig

    @property
    def enabled(self) -> bool:
        hh, recent = self.config.ratios
        return hh + recent < 1.0

    def cache_policy(self, layout: SequenceLayout):
        hh, recent = self.config.ratios
        n_v = layout.visual_len
        return LookMCachePolicy(layout.visual, count_for_ratio(hh, n_v), count_for_ratio(recent, n_v),
                                self.config.merge, self.config.block)
