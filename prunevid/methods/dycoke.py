"""``dycoke``: DyCoke (Tao et al., CVPR'25) — temporal merging before the LLM + dynamic KV pruning in decoding.

Transcribed from the authors' code, KD-TAO/DyCoke (read at commit dd74634); no line of it is copied here.

Stage 1, token temporal merging (TTM) — ``llava/model/llava_arch.py``, ``dycole_ttm``, run on the pooled frame
features before the video's newline token (``dycoke_ttm_sources`` / ``dycoke_ttm_keep`` here). With ``F``
frames of ``P`` tokens and ``n = int((1 - K) * P)`` (plain truncation, as upstream):

* pass 1, for every even ``i`` in ``range(0, F - 1, 2)``: frame ``i`` stays whole, frame ``i + 1`` keeps its
  ``n`` tokens least similar to frame ``i`` (cosine similarity at the same location, both normalised first);
* pass 2, for every ``i`` in ``range(0, F - 4, 4)``: frame ``i + 2`` keeps its ``n`` tokens least similar to
  frame ``i``. The range stops short, so the last 4-frame window's third frame stays whole;
* output: frame after frame; a compared frame's tokens in ``topk(largest=False)`` order (ascending similarity,
  not raster order), a whole frame in raster order. Similarities are computed in the features' own dtype.

The retained share depends on ``F``, ``P`` and ``K`` only (``ttm_frame_counts``): at 32 frames of 196 tokens
and K = 0.7, 9 whole frames + 23 x 58 tokens = 3098 of 6272 (49.4 %); at 8 frames of 49, 3 x 49 + 5 x 14 = 217
of 392. The least it can keep is ``whole / F`` (K = 1): 9/32 at 32 frames, 5/16 at 16, 3/8 at 8.

Edge cases upstream does not handle, handled here explicitly:

* odd ``F``: pass 1 never reaches the last frame, so upstream drops it (its tokens never reach the LLM). The
  default reproduces that and warns; ``keep_odd_last_frame=True`` (kit option) keeps it whole, at the end.
* ``F <= 4``: pass 2 has no window and upstream's ``torch.stack`` of the empty list raises. The kit runs what
  the loops define there: pass 1 alone. ``F = 1`` (nothing to pair; upstream would drop the only frame):
  ``ValueError`` unless ``keep_odd_last_frame``.

Stage 2, dynamic KV pruning in decoding (``DyCokeCachePolicy``) — ``llava/model/language_model/
modeling_qwen2.py``: ``Qwen2Model.forward``'s layer loop and ``PrunableDynamicCache.dycoke_pruning`` /
``update_cache`` / ``update``. At every one-token decode step:

* layers ``0..L-1`` attend to the full cache;
* before layer ``L`` the loop hands ``dycoke_pruning`` the output of the layer it just ran, so the score is
  layer ``L - 1``'s attention: the new token's query (RoPE applied) against that layer's full cache (the new
  token included), scaled by 1/sqrt(d), softmax over the whole cache without a mask, mean over heads, in the
  model's dtype (``calculate_attention_weights`` of ``Qwen2SdpaAttention``, the implementation the lmms-eval
  wrapper picks);
* the scored visual entries are the first ``N_visual - 1`` (upstream's ``image_token_length`` is the merged
  count minus one), so the last visual token is never pruned;
* cosine similarity of that vector with the previous step's (0 at the first step); the vector always
  replaces the previous one. Below ``similarity_threshold`` (0.9): layers ``L..`` attend to the text, the
  top ``int((N_visual - 1) * (1 - P))`` scored entries and the last visual token. At or above it (a stable
  step) layers ``L..`` attend to the FULL cache, not to an earlier selection: upstream resets its index list
  before layer ``L`` at every step and only a re-selection sets it.

The kit hides the unselected entries with an attention mask (the same attention as upstream's gather; the cache
stays stored in full, as upstream's, so this saves attention work, not memory). Adaptations: the visual span is
where the prompt puts it and P is the model's tokens per frame (upstream hard-codes 14 and 196, LLaVA-OV's
values); the previous-step vector starts afresh at every prefill (upstream keeps it across ``generate`` calls,
so a video's first step is compared with the previous video's last when their lengths match).

``L = 0`` would score a layer that does not exist (upstream fails on its first decode step) and ``L`` >= the
depth never prunes: ``apply`` rejects both (valid ``L``: ``1..num_layers - 1``).

Defaults: what the authors' lmms-eval wrapper (``lmms_eval/models/llava_onevision.py``) runs, which its
``eval.sh`` reproduces: L = 3, P = 0.8, K = 0.7 (``builder.py`` alone has K = 0.3; the README's example passes
P = 0.7). ``K = 0`` (without ``retain``) turns the merging off and ``P = 0`` the decode pruning: upstream has
no such switch (its merging at K = 0 still reorders the compared frames and drops an odd last frame).

``retain`` (matched budget) replaces K per video: the largest ``n`` whose count ``whole x P + compared x n``
stays <= ``retain x F x P`` (``merge_ratio_for_retain``); below ``whole / F`` the budget is unreachable: the
merging then runs at K = 1 and ``prunevid.patch.info(model)["budget"]`` says so.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..config import _check_bool, _check_int, _check_number, check_positions
from ..layer_pruner import CachePolicy, cached_keys, rope_queries
from .base import ConfigMixin, Method, Reduction, SequenceLayout, VideoContext


@dataclass
class DyCokeConfig(ConfigMixin):
    K: float = 0.7                     # TTM merging ratio (dycoke_k)
    L: Optional[int] = None            # decode pruning from layer L, scored at layer L - 1 (dycoke_l; None: the
                                       # model's, ``make_config``: 3, or n_layers // 2 beyond the depth)
    P: float = 0.8                     # decode pruning ratio (dycoke_p)
    decode_pruning: bool = True
    similarity_threshold: float = 0.9  # re-select when the attention's cosine similarity to the last step's is below
    retain: Optional[float] = None     # matched budget: replaces K per video (see the module doc)
    keep_odd_last_frame: bool = False  # kit option: keep the last frame of an odd count whole (upstream drops it)
    positions: str = "renumber"        # or "original": kept tokens keep their RoPE positions (PruneVidConfig)

    layer_fields: ClassVar[dict] = {"L": 3}

    def __post_init__(self):
        self.positions = check_positions(self.positions)
        self.K = _check_number("K", self.K, 0.0, 1.0)
        self.P = _check_number("P", self.P, 0.0, 1.0)
        if self.L is not None:
            self.L = _check_int("L", self.L, 0)
        self.decode_pruning = _check_bool("decode_pruning", self.decode_pruning)
        self.keep_odd_last_frame = _check_bool("keep_odd_last_frame", self.keep_odd_last_frame)
        self.similarity_threshold = _check_number("similarity_threshold", self.similarity_threshold, -1.0, 1.0)
        if self.retain is not None:
            self.retain = _check_number("retain", self.retain, 0.0, 1.0, lo_open=True)

    @property
    def merges(self) -> bool:
        """Whether the temporal merging runs (K = 0 or retain = 1: the kit's switch-off)."""
        return self.K > 0.0 if self.retain is None else self.retain < 1.0

    @property
    def prunes_decode(self) -> bool:
        return self.decode_pruning and self.P > 0.0


# ---------------------------------------------------------------------------------------------- stage 1: TTM
def ttm_keep_count(merge_ratio: float, tokens_per_frame: int) -> int:
    """Tokens a compared frame keeps: upstream's ``int((1 - K) * P)`` — truncation, no epsilon (K = 0.7,
    P = 196 -> 58; K = 0.9, P = 10 -> 0, as (1 - 0.9) * 10 = 0.9999999999999998)."""
    return int((1 - merge_ratio) * tokens_per_frame)


def ttm_pairs(num_frames: int) -> List[Tuple[int, int]]:
    """(frame, reference frame) of every compared frame, sorted by frame: pass 1 (i + 1, i) for even i in
    ``range(0, F - 1, 2)``, then pass 2 (i + 2, i) for i in ``range(0, F - 4, 4)``. A frame in no pair stays
    whole, except an odd count's last frame, which upstream drops."""
    ref: Dict[int, int] = {}
    for i in range(0, num_frames - 1, 2):
        ref[i + 1] = i
    for i in range(0, num_frames - 4, 4):
        ref[i + 2] = i
    return sorted(ref.items())


def ttm_frame_counts(num_frames: int, keep_odd_last_frame: bool = False) -> Tuple[int, int, int]:
    """(whole, compared, dropped) frames of the merging for ``num_frames`` frames (32 -> (9, 23, 0))."""
    compared = len(ttm_pairs(num_frames))
    dropped = num_frames % 2 if not keep_odd_last_frame else 0
    return num_frames - compared - dropped, compared, dropped


def dycoke_ttm_sources(frames: torch.Tensor, merge_ratio: float, keep_odd_last_frame: bool = False) -> torch.Tensor:
    """(F, P, C) frame features -> (N,) long flat indices (frame * P + location) of the tokens DyCoke's merging
    outputs, in its output order (see the module doc). Raises ``ValueError`` for F = 1 unless
    ``keep_odd_last_frame``."""
    f, p, _ = frames.shape
    if f < 2 and not keep_odd_last_frame:
        raise ValueError(f"DyCoke's temporal merging pairs frames: with {f} frame it would drop it (upstream fails "
                         f"here); pass keep_odd_last_frame=True to keep a lone frame whole")
    n = ttm_keep_count(merge_ratio, p)
    refs = dict(ttm_pairs(f))
    whole = torch.arange(p, device=frames.device)
    out = []
    for t in range(f - f % 2):
        r = refs.get(t)
        if r is None:
            out.append(t * p + whole)
            continue
        if t % 2:   # pass 1 normalises both frames before the cosine similarity
            sim = F.cosine_similarity(F.normalize(frames[r], p=2, dim=1), F.normalize(frames[t], p=2, dim=1), dim=1)
        else:       # pass 2 does not
            sim = F.cosine_similarity(frames[r], frames[t], dim=1)
        out.append(t * p + sim.topk(n, largest=False).indices)
    if f % 2 and keep_odd_last_frame:
        out.append((f - 1) * p + whole)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=frames.device)


def dycoke_ttm_keep(frames: torch.Tensor, merge_ratio: float, keep_odd_last_frame: bool = False) -> torch.Tensor:
    """(F, P, C) -> (F, P) bool: the tokens DyCoke's temporal merging keeps (``dycoke_ttm_sources`` gives their
    order). Signature change: the former ``window`` argument is gone (upstream's windows are fixed at 4 frames);
    ``keep_odd_last_frame`` is new."""
    f, p, _ = frames.shape
    kept = torch.zeros(f * p, dtype=torch.bool, device=frames.device)
    kept[dycoke_ttm_sources(frames, merge_ratio, keep_odd_last_frame)] = True
    return kept.view(f, p)


def merge_ratio_for_retain(retain: float, num_frames: int, tokens_per_frame: int,
                           keep_odd_last_frame: bool = False) -> Tuple[float, int, bool]:
    """(K, n, reachable) for a target retained share: ``n`` is the largest per-frame count of the compared
    frames with ``whole x P + compared x n <= int(retain x F x P)`` (clamped to 0..P); K = 1 - (n + 0.5) / P is
    a merging ratio whose ``ttm_keep_count`` is exactly ``n``. ``reachable`` is False when even n = 0 keeps
    more than the target."""
    whole, compared, _ = ttm_frame_counts(num_frames, keep_odd_last_frame)
    p = tokens_per_frame
    target = int(retain * num_frames * p + 1e-9)
    if compared == 0:
        n, reachable = p, whole * p <= target
    else:
        n = (target - whole * p) // compared
        reachable = n >= 0
        n = min(max(n, 0), p)
    k = 0.0 if n >= p else 1.0 - (n + 0.5) / p
    return k, n, reachable


# ---------------------------------------------------------------------------------- stage 2: decode pruning
def attention_changed(prev: Optional[torch.Tensor], cur: torch.Tensor, threshold: float) -> bool:
    """Upstream's re-selection test: the similarity is 0 at the first step (so the first step re-selects for
    any threshold above 0), else the cosine similarity of the two attention vectors; re-select when it is
    below ``threshold``."""
    sim = 0.0 if prev is None else float(F.cosine_similarity(cur, prev, dim=0))
    return sim < threshold


def decode_keep_count(visual_len: int, ratio: float) -> int:
    """Scored visual entries kept at a re-selection: ``int((N_visual - 1) * (1 - P))``, as upstream."""
    return int(max(visual_len - 1, 0) * (1 - ratio))


class DyCokeCachePolicy(CachePolicy):
    """Decode-time dynamic KV pruning (see the module doc): scores after layer ``layer - 1``, prunes layers
    ``layer..`` on a step that re-selects, leaves the full cache on a stable step."""

    def __init__(self, layer: int, visual: slice, ratio: float, threshold: float):
        if layer < 1:
            raise ValueError("DyCoke's decode pruning scores layer L - 1: L must be >= 1")
        self.layer, self.visual, self.threshold = layer, visual, threshold
        self.scored = slice(visual.start, max(visual.start, visual.stop - 1))   # the last visual entry is never scored
        self.n_keep = decode_keep_count(visual.stop - visual.start, ratio)
        self.prev: Optional[torch.Tensor] = None
        self.selected: Optional[torch.Tensor] = None       # scored-entry indices of this step's selection, if any
        self.info = {"decode_visual_kv_attended": None, "decode_reselections": 0, "decode_full_cache_steps": 0,
                     "decode_steps": 0, "decode_last_step_pruned": None}

    def after_decode_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        if i == self.layer - 1:
            self.selected = None           # upstream resets its index list before layer L at every step
            if cache is None or hidden_in.shape[1] != 1:   # only one-token steps are pruned upstream
                return
            rows = torch.tensor([0], device=hidden_in.device)
            with torch.no_grad():
                q = rope_queries(layer, hidden_in, rows, kwargs.get("position_embeddings"))      # (H, 1, d)
                k = cached_keys(cache, i, q.shape[0])                                            # (H, N, d)
                # upstream's calculate_attention_weights: in the model's dtype, scaled by 1/sqrt(d), no mask
                probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1])), dim=-1)
                attn = probs.mean(dim=0)[0, self.scored]                                         # (N_visual - 1,)
            changed = attention_changed(self.prev, attn, self.threshold)
            self.prev = attn
            if changed:
                self.selected = torch.topk(attn, self.n_keep, sorted=False).indices
            n_vis = self.visual.stop - self.visual.start
            self.info["decode_steps"] += 1
            self.info["decode_reselections" if changed else "decode_full_cache_steps"] += 1
            self.info["decode_last_step_pruned"] = changed
            self.info["decode_visual_kv_attended"] = (self.n_keep + n_vis - (self.scored.stop - self.scored.start)
                                                      if changed else n_vis)

    def before_decode_layer(self, i, layer, kwargs, cache) -> Optional[dict]:
        if i < self.layer or self.selected is None or cache is None:
            return None
        pe = kwargs.get("position_embeddings")
        q = pe[0].shape[-2] if pe is not None else 1
        past = cache.layers[i].get_seq_length()
        kv = past + q
        allowed = torch.ones(kv, dtype=torch.bool, device=self.selected.device)
        allowed[self.scored] = False
        allowed[self.scored.start + self.selected] = True
        causal = torch.arange(kv)[None, :] <= (past + torch.arange(q))[:, None]               # (q, kv)
        new = (allowed[None, :] & causal.to(allowed.device))[None, None]                     # (1, 1, q, kv)
        mask = kwargs.get("attention_mask")
        keys = cache.layers[i].keys
        if isinstance(mask, torch.Tensor):
            if mask.dim() != 4:
                raise NotImplementedError("DyCoke's decode pruning needs a 4-D attention mask or none")
            m = mask[..., :kv]
            new = (m & new.to(m.device)) if m.dtype == torch.bool else m.masked_fill(~new.to(m.device),
                                                                                     torch.finfo(m.dtype).min)
        elif mask is None:   # additive: eager attention adds the mask, SDPA takes either kind
            new = torch.zeros(new.shape, dtype=keys.dtype, device=keys.device).masked_fill(
                ~new.to(keys.device), torch.finfo(keys.dtype).min)
        else:
            raise NotImplementedError(f"DyCoke's decode pruning cannot combine a {type(mask).__name__} mask")
        return dict(kwargs, attention_mask=new.to(device=keys.device))


# ------------------------------------------------------------------------------------------------- method
class DyCokeMethod(Method):
    name = "dycoke"
    config_class = DyCokeConfig

    @property
    def enabled(self) -> bool:
        return self.config.merges or self.config.prunes_decode

    def validate(self, num_layers: int) -> None:
        cfg = self.config
        if not cfg.prunes_decode:
            return
        if cfg.L < 1:
            raise ValueError("DyCoke L=0: its decode pruning scores the attention of layer L-1 (upstream's loop "
                             "passes the previous layer's output) and prunes from layer L; valid L: "
                             f"1..{num_layers - 1}, or pass decode_pruning=False")
        if cfg.L > num_layers - 1:
            raise ValueError(f"DyCoke L={cfg.L}: the language model has {num_layers} decoder layers, so there is no "
                             f"layer L to prune from (valid L: 1..{num_layers - 1}); pass a smaller L or "
                             f"decode_pruning=False")

    def entering(self, n_visual: float, given: Optional[float] = None) -> float:
        """Its temporal merging decides what enters; the decode-time pruning leaves the prefill's cache whole."""
        if given is None and not self.config.merges:
            return n_visual
        return super().entering(n_visual, given)

    def reduce(self, video: VideoContext) -> Optional[Reduction]:
        cfg = self.config
        if not cfg.merges:
            return None
        f, p = video.num_frames, video.tokens_per_frame
        budget = None
        if cfg.retain is None:
            k = cfg.K
        else:
            k, n, ok = merge_ratio_for_retain(cfg.retain, f, p, cfg.keep_odd_last_frame)
            whole, compared, _ = ttm_frame_counts(f, cfg.keep_odd_last_frame)
            budget = {"target_ratio": cfg.retain, "target_tokens": int(cfg.retain * f * p + 1e-9), "merge_ratio": k,
                      "kept_per_compared_frame": n, "expected_tokens": whole * p + compared * n, "reachable": ok,
                      "note": None if ok else (f"DyCoke's temporal merging keeps {whole} of {f} frames whole: it "
                                               f"cannot retain less than {whole}/{f} = {whole / f:.3f} (K = 1)")}
        src = dycoke_ttm_sources(video.frames, k, cfg.keep_odd_last_frame)
        dropped = [f - 1] if f % 2 and not cfg.keep_odd_last_frame else []
        if dropped:
            warnings.warn(f"DyCoke drops the last of {f} frames, as upstream does for an odd frame count "
                          f"(keep_odd_last_frame=True keeps it)", UserWarning, stacklevel=2)
        kept = torch.zeros(f * p, dtype=torch.bool, device=src.device)
        kept[src] = True
        info = {"merge_ratio": k, "ttm_kept_per_compared_frame": ttm_keep_count(k, p), "dropped_frames": dropped,
                "sources": src}
        if budget is not None:
            info["budget"] = budget
        return Reduction(tokens=video.frames.reshape(f * p, -1)[src], kept=kept.view(f, p), info=info)

    def cache_policy(self, layout: SequenceLayout):
        cfg = self.config
        if not cfg.prunes_decode:
            return None
        return DyCokeCachePolicy(cfg.L, layout.visual, cfg.P, cfg.similarity_threshold)
