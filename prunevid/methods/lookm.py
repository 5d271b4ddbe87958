"""``lookm``: LOOK-M (Wan et al., EMNLP'24 Findings) — text-prior KV-cache eviction with merging, after prefill.

Reference: SUSTechBruce/LOOK-M, ``LLaVA-mix_merge_v1/llava/model/kv_token_merge/modify_llama.py``; the method
the README runs (``scripts/text-prior-pivot-merge_eval.sh``, ``--kv_mode text_prior_pivot_merge``) is
``TextPivotLlamaAttention_drop`` -> ``TextPivotMerge_LayerWise.__call__``, with ``hh_ratio = recent_ratio = 0.1``
(``generate.py`` defaults and the script).

The prefill runs on every token (prefill FLOPs 1.00x, outputs of the prefill unchanged); what shrinks is the
KV cache that decoding reads, so Look-M saves decode memory and decode attention, not prefill compute. Per
decoder layer, right after the layer ran on the prefill (upstream: inside the attention, after the output
was formed from the full K/V; only when ``q_len != 1``, so never during decoding):

  1. score every cached entry **per KV head** by the attention it accumulates over all prefill query rows
     (H2O column sums of that layer's causal softmax with RoPE; upstream ``_update_hh_score``:
     ``attn.sum(0).sum(1)`` -> (heads, N)). Upstream's LLaVA-1.5 has one query head per KV head; under
     grouped-query attention the kit sums the column sums of a KV head's query heads (the documented
     adaptation). Computed block by block (``attention_column_sums``: never N x N).
  2. sizes (``lookm_sizes``): ``hh = int(N * hh_ratio)``, ``recent = int(N * recent_ratio)`` of the whole prefill
     length N (text included); nothing happens when ``N <= hh + recent`` (upstream's ``seq_len <= cache_size``).
  3. text prior (``lookm_keep``): every text entry (everything that is not a visual token; the kit's
     image-newline counts as text) stays; the last ``recent`` entries of the sequence stay; the top-``hh``
     of the older entries, with text ranked above every visual entry, are the heavy hitters — so the text
     before the recent window uses up heavy-hitter slots first and only ``hh - n_old_text`` visual entries
     are kept by score (upstream adds -65516 to the image scores before its top-k). Each KV head keeps its
     own entries, the same number in every head (``max(hh, n_old_text) + recent``).
  4. merge (``merge``, ``merge_evicted``): every evicted entry joins the kept entry of the same head whose key
     is most similar (cosine), by ``scatter_reduce(mean, include_self=True)``: ``"pivotal"`` (upstream's
     Look-M) averages the kept slot with ``(k_evicted + k_kept)/2`` of each entry sent to it, keys and values
     alike (the value target is the one the keys chose); ``"average"`` / ``"weighted"``
     (``text_prior_avg_merge`` / ``text_prior_weighted_merge``) merge only the evicted entries whose
     head-averaged best similarity is at least the mean, raw or scaled by that similarity; ``"none"``
     (``text_prior_h2o``) evicts only.

Upstream defects, handled: ``TextAVGMergeKVCache_LayerWise`` scatters the *unfiltered* evicted keys with the
*filtered* targets (row i of every evicted entry goes where the i-th merged entry should); the kit sends each
merged entry to its own target. ``text_prior_h2o`` names a class (``TextH2OKVCache_LayerWise``) whose header
is missing from modify_llama.py (NameError); the kit's ``"none"`` is the evident plain text-prior eviction. A
zero recent window makes upstream's slices empty (its top-k fails); the kit treats it as an empty window.
Scores, similarities and merges are computed in float32 (upstream: the model dtype, where the -65516 offset
in bf16/fp16 also rounds most image scores into ties before the top-k).

``ratios_of="visual"`` (named option, the kit's earlier rule, off by default): both ratios are read on the
N_v visual entries, the recent window is the last visual entries and the heavy hitters the top visual
entries of the rest, text kept on top — hh = recent = 0.1 then keep exactly 20% of the visual KV.

``retain`` (matched budget, a KV budget on the visual entries): the cache keeps ``n_text + floor(retain x N_v)``
entries (``"visual"``: ``floor(retain x N_v)`` visual entries), split between heavy hitters and the recent
window in the proportion ``hh_ratio : recent_ratio`` (upstream's 1:1 by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import _check_int, _check_number
from ..layer_pruner import CachePolicy, cached_keys, rope_queries
from ..prune import attention_column_sums, count_for_ratio
from .base import ConfigMixin, LayerSchedule, Method, SequenceLayout

MERGES = ("pivotal", "average", "weighted", "none")
RATIOS_OF = ("sequence", "visual")


@dataclass
class LookMConfig(ConfigMixin):
    hh_ratio: float = 0.1
    recent_ratio: float = 0.1
    merge: str = "pivotal"
    ratios_of: str = "sequence"
    block: int = 256
    retain: Optional[float] = None

    def __post_init__(self):
        self.hh_ratio = _check_number("hh_ratio", self.hh_ratio, 0.0, 1.0)
        self.recent_ratio = _check_number("recent_ratio", self.recent_ratio, 0.0, 1.0)
        self.block = _check_int("block", self.block, 1)
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.ratios_of not in RATIOS_OF:
            raise ValueError(f"ratios_of must be one of {RATIOS_OF}, got {self.ratios_of!r}")
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
            if self.hh_ratio + self.recent_ratio <= 0.0:
                raise ValueError("retain splits the budget in the proportion hh_ratio : recent_ratio; "
                                 "at least one of them must be > 0")

    def sizes(self, n_seq: int, n_visual: int) -> tuple:
        """(n_heavy, n_recent) for a prefill of ``n_seq`` entries of which ``n_visual`` are visual."""
        return lookm_sizes(n_seq, n_visual, self.hh_ratio, self.recent_ratio, ratios_of=self.ratios_of,
                           retain=self.retain)


def lookm_sizes(n_seq: int, n_visual: int, hh_ratio: float, recent_ratio: float, *,
                ratios_of: str = "sequence", retain: Optional[float] = None) -> tuple:
    """(n_heavy, n_recent): heavy-hitter and recent-window sizes.

    ``"sequence"`` (upstream ``TextPivotMerge_LayerWise.__call__``): ``int(n_seq x ratio)`` each, of the whole
    prefill. ``"visual"`` (the kit's earlier rule): ``floor(n_visual x ratio)`` each. With ``retain`` the cache
    holds ``total = floor(retain x n_visual)`` (+ the ``n_seq - n_visual`` text entries for ``"sequence"``)
    entries, ``n_recent = floor(total x recent_ratio / (hh_ratio + recent_ratio))`` and ``n_heavy`` the rest.
    """
    if ratios_of not in RATIOS_OF:
        raise ValueError(f"ratios_of must be one of {RATIOS_OF}, got {ratios_of!r}")
    if retain is None:
        if ratios_of == "sequence":
            return int(n_seq * hh_ratio), int(n_seq * recent_ratio)        # upstream's plain int()
        return count_for_ratio(hh_ratio, n_visual), count_for_ratio(recent_ratio, n_visual)
    total = count_for_ratio(retain, n_visual) + (n_seq - n_visual if ratios_of == "sequence" else 0)
    n_recent = count_for_ratio(recent_ratio / (hh_ratio + recent_ratio), total)
    return total - n_recent, n_recent


def lookm_keep(scores: torch.Tensor, n_heavy: int, n_recent: int,
               protected: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kept entries of Look-M's text-prior eviction, each head on its own scores.

    Args:
        scores: (H, N) accumulated attention per KV head (or (N,) for one head).
        n_heavy, n_recent: heavy-hitter and recent-window sizes (``lookm_sizes``).
        protected: (N,) bool, entries that always stay (the text prior); ``None`` = none.

    Rule (upstream ``TextPivotMerge_LayerWise.__call__``): the last ``n_recent`` entries stay; of the others
    the top ``n_heavy`` stay, protected entries ranked above every unprotected one (so protected entries
    outside the window use up heavy-hitter slots first); protected entries stay anyway.
    ``n_recent = 0`` is an empty window (upstream's ``[:, :-0]`` slices are empty there and its top-k fails).

    Returns:
        (H, T') kept indices, ascending in each row, the same T' = ``max(n_heavy, n_protected_old) +
        n_recent`` (clamped to N) in every head; (T',) for a 1-D ``scores``.

    Changed (fidelity issue): was (N_v,) visual scores summed over heads -> one (n,) index set; now per head,
    with ``protected``.
    """
    one = scores.dim() == 1
    s = scores[None] if one else scores
    h, n = s.shape
    n_recent = max(0, min(int(n_recent), n))
    keep = torch.zeros(h, n, dtype=torch.bool, device=s.device)
    keep[:, n - n_recent:] = True
    old = n - n_recent
    rank = s[:, :old].float()
    if protected is not None:
        prot = protected.to(s.device).bool()
        keep |= prot[None]
        rank = torch.where(prot[None, :old], torch.full_like(rank, float("inf")), rank)
    k = max(0, min(int(n_heavy), old))
    if k:
        keep.scatter_(1, rank.topk(k, dim=-1).indices, True)
    out = keep.nonzero()[:, 1].view(h, -1)         # row-major: ascending per head; equal counts per head
    return out[0] if one else out


def kv_head_scores(scores: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """(H, N) per-query-head scores -> (H_kv, N): the sum over each KV head's group of query heads (query head
    h reads KV head ``h // (H / H_kv)``, transformers' ``repeat_kv``). Upstream's LLaVA-1.5 has H = H_kv, where
    this is the identity; the sum is the kit's reading of ``attn.sum(0).sum(1)`` under grouped-query attention."""
    h, n = scores.shape
    if h % num_kv_heads:
        raise ValueError(f"{h} query heads do not split into {num_kv_heads} KV heads")
    return scores.view(num_kv_heads, h // num_kv_heads, n).sum(1)


def merge_evicted(keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, evicted: torch.Tensor,
                  mode: str = "pivotal", block: int = 256):
    """Merge each evicted entry into the kept entry of the same head with the most similar key.

    Args:
        keys, values: (H, N, d) and (H, N, dv), one KV head per row.
        kept, evicted: (H, T') and (H, N - T') per-head indices (ascending); a 1-D index is used for every head.
        mode: ``"pivotal"``, ``"average"``, ``"weighted"`` or ``"none"`` (upstream ``TextPivotMerge``,
            ``TextAVGMerge``, ``TextWeightedMerge``, ``text_prior_h2o``; modify_llama.py).
        block: evicted entries whose similarities to the kept keys are formed at a time.

    Target of evicted entry e in head h: ``argmax_j cos(k_e, k_kept_j)`` (first maximum), the same target for
    its value. Every kept slot becomes ``scatter_reduce(mean, include_self=True)`` of itself and what is sent
    to it: ``"pivotal"`` sends ``(x_e + x_target)/2`` (x = key or value, the target's pre-merge entry);
    ``"average"`` sends ``x_e`` and ``"weighted"`` ``cos_e x_e``, both only for the evicted slots e whose best
    similarity averaged over heads is >= the mean best similarity over all heads and slots (slot e of each
    head is that head's e-th evicted entry, as upstream's ``max_values.mean(1)``).

    Returns:
        (H, T', d) keys and (H, T', dv) values, in ``keys.dtype`` (computed in float32).

    Changed (fidelity issue): ``kept`` / ``evicted`` may be per head; ``"pivotal"`` was ``(kept +
    mean(evicted))/2``, ``"average"`` merged every evicted entry; ``"weighted"`` is new.
    """
    if mode not in MERGES:
        raise ValueError(f"unknown merge {mode!r}")
    h, _, d = keys.shape
    dv = values.shape[-1]
    kept = kept.to(keys.device)
    evicted = evicted.to(keys.device)
    kept = kept.expand(h, -1) if kept.dim() == 1 else kept
    evicted = evicted.expand(h, -1) if evicted.dim() == 1 else evicted
    k_kept = keys.gather(1, kept[..., None].expand(-1, -1, d)).float()
    v_kept = values.gather(1, kept[..., None].expand(-1, -1, dv)).float()
    n_ev = evicted.shape[1]
    if mode == "none" or n_ev == 0 or kept.shape[1] == 0:
        return k_kept.to(keys.dtype), v_kept.to(values.dtype)
    kn = F.normalize(k_kept, dim=-1)
    best, target = [], []
    for start in range(0, n_ev, block):
        ke = keys.gather(1, evicted[:, start:start + block, None].expand(-1, -1, d)).float()
        sim = F.normalize(ke, dim=-1) @ kn.transpose(1, 2)                      # (H, b, T') cosine
        val, idx = sim.max(dim=-1)
        best.append(val)
        target.append(idx)
    best, target = torch.cat(best, 1), torch.cat(target, 1)                      # (H, n_ev)
    if mode == "pivotal":
        use = torch.ones(n_ev, dtype=torch.bool, device=keys.device)
    else:                                                   # upstream: filter_indices over head-averaged slots
        use = best.mean(0) >= best.mean()
    sum_k, sum_v = k_kept.clone(), v_kept.clone()           # include_self: the kept entry counts once
    count = torch.ones(h, kept.shape[1], device=keys.device)
    for start in range(0, n_ev, block):
        sl = slice(start, start + block)
        u = use[sl]
        if not bool(u.any()):
            continue
        ev, tgt, w = evicted[:, sl][:, u], target[:, sl][:, u], best[:, sl][:, u]
        ke = keys.gather(1, ev[..., None].expand(-1, -1, d)).float()
        ve = values.gather(1, ev[..., None].expand(-1, -1, dv)).float()
        if mode == "pivotal":
            ke = (ke + k_kept.gather(1, tgt[..., None].expand(-1, -1, d))) / 2
            ve = (ve + v_kept.gather(1, tgt[..., None].expand(-1, -1, dv))) / 2
        elif mode == "weighted":
            ke, ve = w[..., None] * ke, w[..., None] * ve
        sum_k.scatter_add_(1, tgt[..., None].expand(-1, -1, d), ke)
        sum_v.scatter_add_(1, tgt[..., None].expand(-1, -1, dv), ve)
        count.scatter_add_(1, tgt, torch.ones_like(tgt, dtype=count.dtype))
    return (sum_k / count[..., None]).to(keys.dtype), (sum_v / count[..., None]).to(values.dtype)


class LookMCachePolicy(CachePolicy):
    """Evict + merge each layer's KV right after that layer's prefill, per KV head (see the module doc)."""

    def __init__(self, visual: slice, n_heavy: int, n_recent: int, merge: str, block: int,
                 ratios_of: str = "sequence"):
        self.visual, self.n_heavy, self.n_recent = visual, n_heavy, n_recent
        self.merge, self.block, self.ratios_of = merge, block, ratios_of
        self.kept: Optional[torch.Tensor] = None
        self.info = {"kv_heavy": n_heavy, "kv_recent": n_recent, "kv_ratios_of": ratios_of,
                     "saves": "decode memory (not prefill FLOPs)"}

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """(Hkv, N) per-KV-head scores -> (Hkv, T') kept cache positions."""
        hkv, n = scores.shape
        vis = torch.zeros(n, dtype=torch.bool, device=scores.device)
        vis[self.visual] = True
        if self.ratios_of == "sequence":
            return lookm_keep(scores, self.n_heavy, self.n_recent, protected=~vis)
        kept_vis = lookm_keep(scores[:, self.visual], self.n_heavy, self.n_recent) + self.visual.start
        text = (~vis).nonzero().squeeze(1)
        return torch.cat([text.expand(hkv, -1), kept_vis], dim=1).sort(dim=1).values

    def after_prefill_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        if cache is None:
            return
        lyr = cache.layers[i]
        n = lyr.keys.shape[-2]
        if hidden_in.shape[1] != n:                      # only a fresh prefill (empty cache before it)
            return
        if self.ratios_of == "sequence" and n <= self.n_heavy + self.n_recent:
            return                                       # upstream: seq_len <= cache_size leaves the cache
        rows = torch.arange(n, device=hidden_in.device)
        with torch.no_grad():
            q = rope_queries(layer, hidden_in, rows, kwargs.get("position_embeddings"))     # (H, N, d)
            k = cached_keys(cache, i, q.shape[0])
            sums = attention_column_sums(q, k, scaling=layer.self_attn.scaling, query_positions=rows,
                                         block=self.block)                                  # (H, N)
            hkv = lyr.keys.shape[1]
            scores = kv_head_scores(sums, hkv)                                            # (Hkv, N)
            kept = self.select(scores)
            drop = torch.ones(hkv, n, dtype=torch.bool, device=kept.device)
            drop.scatter_(1, kept, False)
            evicted = drop.nonzero()[:, 1].view(hkv, -1)
            new_k, new_v = merge_evicted(lyr.keys[0], lyr.values[0], kept, evicted, self.merge, self.block)
        lyr.keys, lyr.values = new_k[None].contiguous(), new_v[None].contiguous()
        self.kept = kept

    def kept_positions(self) -> Optional[torch.Tensor]:
        """(Hkv, T') prefill positions in the last layer's cache, one row per KV head (each head keeps its own
        entries; the text entries sit in the same slots in every head)."""
        return self.kept


class LookMMethod(Method):
    name = "lookm"
    budget_measure = "kv"                   # retain: its KV budget (the prefill keeps every token)
    config_class = LookMConfig

    @property
    def enabled(self) -> bool:
        cfg = self.config
        if cfg.retain is not None:
            return cfg.retain < 1.0
        return cfg.hh_ratio + cfg.recent_ratio < 1.0

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        return n_visual if given is None else given            # the prefill runs on every token

    def schedule(self, n_layers: int, n_text: float, n_visual: float, *, entering: Optional[float] = None,
                 kept: Optional[float] = None) -> LayerSchedule:
        """Every layer runs on every token; after the prefill each layer's cache holds ``kept`` visual entries
        (default: ``floor(retain x n_visual)`` with a budget; without one the count depends on the text prior
        and must be given)."""
        n = self.entering(n_visual, entering)
        if kept is None:
            if not self.enabled:
                kept = n
            elif self.config.retain is not None:
                kept = count_for_ratio(self.config.retain, int(n)) if float(n).is_integer() else self.config.retain * n
            else:
                raise ValueError("lookm: the visual entries its cache keeps depend on the prompt's text at these "
                                 "settings; give the count (kept=, the CLI's --retained)")
        return LayerSchedule([n] * n_layers, [kept] * n_layers)

    def cache_policy(self, layout: SequenceLayout):
        n_heavy, n_recent = self.config.sizes(layout.seq_len, layout.visual_len)
        return LookMCachePolicy(layout.visual, n_heavy, n_recent, self.config.merge, self.config.block,
                                self.config.ratios_of)
