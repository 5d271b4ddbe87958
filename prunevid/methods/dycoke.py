"""``dycoke``: DyCoke (Tao et al., CVPR'25) — temporal merging before the LLM + dynamic KV pruning in decoding.

Stage 1, token temporal merging (TTM), ``dycoke_ttm_keep``: frames in windows of ``window`` (4). In each
window frame 0 is kept whole; frame 1 is compared with frame 0, frame 2 with frame 0 and frame 3 with
frame 2 (the pairs (0,1), (2,3), (0,2) of the paper), token by token at the same position (cosine
similarity); each compared frame keeps its ``floor((1 - K) x P)`` least similar tokens (raster order).
Retention (1 + 3(1 - K)) / 4 = 47.5% at K = 0.7; it cannot go below 1/4 (K = 1). A trailing partial
window is handled the same way as far as it goes.

Stage 2, dynamic KV pruning (``DyCokeCachePolicy``), decode steps only: after decoder layer ``L`` the new
token's attention over the cache (its own q with RoPE against layer L's cached keys, softmax over the whole
cache, mean over heads) is taken on the visual entries; when it is the first step or its cosine similarity
with the previous step's vector is below ``similarity_threshold`` (0.9), the top ``floor((1 - P) x
N_visual)`` visual entries are re-selected. Layers ``L+1..`` attend to the text and the selected visual
entries only (an attention mask over the cache — equal to DyCoke's gather; the full cache stays stored, as
in DyCoke, so this saves attention work, not memory).

Defaults: the setting the paper reports (README): L = 3, P = 0.7, K = 0.7 (``builder.py`` has P = 0.8,
K = 0.3). ``retain`` (matched budget) sets K = 1 - (4 retain - 1) / 3 for the prefill; below 0.25 it is
unreachable and ``apply`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..config import _check_bool, _check_int, _check_number, check_positions
from ..llm import CachePolicy, cached_keys, rope_queries
from ..prune import bottom_k_sorted, count_for_ratio, top_k_sorted
from .base import ConfigMixin, Method, SequenceLayout, VideoContext, frames_reduction


@dataclass
class DyCokeConfig(ConfigMixin):
    K: float = 0.7
    L: int = 3
    P: float = 0.7
    window: int = 4
    decode_pruning: bool = True
    similarity_threshold: float = 0.9
    retain: Optional[float] = None
    positions: str = "renumber"        # or "original": kept tokens keep their RoPE positions (PruneVidConfig)

    def __post_init__(self):
        self.positions = check_positions(self.positions)
        self.K = _check_number("K", self.K, 0.0, 1.0)
        self.P = _check_number("P", self.P, 0.0, 1.0)
        self.L = _check_int("L", self.L, 0)
        self.window = _check_int("window", self.window, 1)
        self.decode_pruning = _check_bool("decode_pruning", self.decode_pruning)
        self.similarity_threshold = _check_number("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)
            floor = 1.0 / self.window
            if self.retain < floor - 1e-9:
                raise ValueError(f"DyCoke cannot reach retain={self.retain}: its temporal merging keeps every "
                                 f"window's first frame whole, so it retains at least 1/{self.window} = {floor:.3f}")

    @property
    def merge_ratio(self) -> float:
        """K, or the K that gives ``retain`` (1 + (W-1)(1-K)) / W."""
        if self.retain is None:
            return self.K
        w = self.window
        return min(1.0, max(0.0, 1.0 - (w * self.retain - 1.0) / (w - 1))) if w > 1 else 0.0


def ttm_pairs(num_frames: int, window: int = 4) -> List[tuple]:
    """(frame, reference frame) pairs of the temporal merging: per window (0,1), (2,3), (0,2) (offsets)."""
    pairs = []
    for start in range(0, num_frames, window):
        w = min(window, num_frames - start)
        for f, ref in ((1, 0), (3, 2), (2, 0)):
            if f < w and ref < w:
                pairs.append((start + f, start + ref))
    if window != 4:   # other windows: every frame against the window's first frame
        pairs = [(s + j, s) for s in range(0, num_frames, window) for j in range(1, min(window, num_frames - s))]
    return sorted(pairs)


def dycoke_ttm_keep(frames: torch.Tensor, merge_ratio: float, window: int = 4) -> torch.Tensor:
    """(F, P, C) -> (F, P) bool kept mask of DyCoke's temporal merging (see the module doc)."""
    f, p, _ = frames.shape
    kept = torch.ones(f, p, dtype=torch.bool, device=frames.device)
    n_keep = count_for_ratio(1.0 - merge_ratio, p)
    for frame, ref in ttm_pairs(f, window):
        sim = F.cosine_similarity(frames[frame].float(), frames[ref].float(), dim=-1)     # (P,)
        kept[frame] = False
        kept[frame, bottom_k_sorted(sim, n_keep)] = True
    return kept


def attention_changed(prev: Optional[torch.Tensor], cur: torch.Tensor, threshold: float) -> bool:
    """DyCoke's re-selection rule: first step, or cosine similarity to the previous step below ``threshold``."""
    if prev is None or prev.shape != cur.shape:
        return True
    return float(F.cosine_similarity(prev.float(), cur.float(), dim=0)) < threshold


class DyCokeCachePolicy(CachePolicy):
    """Decode-time dynamic KV pruning (see the module doc)."""

    def __init__(self, layer: int, visual: slice, n_keep: int, threshold: float):
        self.layer, self.visual, self.n_keep, self.threshold = layer, visual, n_keep, threshold
        self.prev: Optional[torch.Tensor] = None
        self.selected: Optional[torch.Tensor] = None
        self.info = {"decode_visual_kv_attended": None, "decode_reselections": 0, "decode_steps": 0}

    def after_decode_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        if i != self.layer or cache is None:
            return
        rows = torch.tensor([hidden_in.shape[1] - 1], device=hidden_in.device)
        with torch.no_grad():
            q = rope_queries(layer, hidden_in, rows, kwargs.get("position_embeddings"))      # (H, 1, d)
            k = cached_keys(cache, i, q.shape[0])                                            # (H, N, d)
            probs = (torch.matmul(q.float(), k.float().transpose(-1, -2)) * layer.self_attn.scaling).softmax(-1)
            attn = probs.mean(dim=0)[0, self.visual]                                         # (N_visual,)
        if attention_changed(self.prev, attn, self.threshold):
            self.selected = top_k_sorted(attn, self.n_keep)
            self.info["decode_reselections"] += 1
        self.prev = attn
        self.info["decode_steps"] += 1
        self.info["decode_visual_kv_attended"] = int(self.selected.numel())

    def before_decode_layer(self, i, layer, kwargs, cache) -> Optional[dict]:
        if i <= self.layer or self.selected is None or cache is None:
            return None
        pe = kwargs.get("position_embeddings")
        q = pe[0].shape[-2] if pe is not None else 1
        past = cache.layers[i].get_seq_length()
        kv = past + q
        allowed = torch.ones(kv, dtype=torch.bool, device=self.selected.device)
        allowed[self.visual] = False
        allowed[self.visual.start + self.selected] = True
        causal = torch.arange(kv)[None, :] <= (past + torch.arange(q))[:, None]               # (q, kv)
        new = (allowed[None, :] & causal.to(allowed.device))[None, None]                     # (1, 1, q, kv)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            if mask.dim() != 4:
                raise NotImplementedError("DyCoke's decode pruning needs a 4-D attention mask or none")
            m = mask[..., :kv]
            new = (m & new) if m.dtype == torch.bool else m.masked_fill(~new, torch.finfo(m.dtype).min)
        elif mask is not None:
            raise NotImplementedError(f"DyCoke's decode pruning cannot combine a {type(mask).__name__} mask")
        return dict(kwargs, attention_mask=new.to(device=cache.layers[i].keys.device))


class DyCokeMethod(Method):
    name = "dycoke"
    config_class = DyCokeConfig

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return cfg.merge_ratio > 0.0 or (cfg.decode_pruning and cfg.P > 0.0)

    def validate(self, num_layers: int) -> None:
        cfg = self.config
        if cfg.decode_pruning and cfg.P > 0.0 and cfg.L > num_layers - 2:
            raise ValueError(f"DyCoke L={cfg.L} leaves no later layer for the decode-time KV pruning: the "
                             f"language model has {num_layers} decoder layers (valid L: 0..{num_layers - 2}); "
                             f"pass a smaller L or decode_pruning=False")

    def reduce(self, video: VideoContext):
        k = self.config.merge_ratio
        if k <= 0.0:
            return None
        kept = dycoke_ttm_keep(video.frames, k, self.config.window)
        return frames_reduction(video.frames, kept, {"merge_ratio": k})

    def cache_policy(self, layout: SequenceLayout):
        cfg = self.config
        if not cfg.decode_pruning or cfg.P <= 0.0:
            return None
        return DyCokeCachePolicy(cfg.L, layout.visual, count_for_ratio(1.0 - cfg.P, layout.visual_len),
                                 cfg.similarity_threshold)
