"""Shared in-LLM mechanics, written once for every model and method that prunes inside the decoder.

* ``score_at_layer``: stage-2 scores for the visual tokens from a decoder layer's own q/k, forming only the
  post-video query rows (works under SDPA / flash attention: no layer runs eagerly, no N x N matrix).
* ``LayerPruner``: forward hooks on the decoder layers of one model instance. During an *armed* prefill it
  scores at layer K (pre-hook), cuts the hidden states and the KV cache of layers 0..K after layer K
  (post-hook), and slices the per-layer inputs (rotary cos/sin, position ids, a 4-D mask) of layers K+1..
  Kept tokens keep their original position ids. Decode steps are only touched by a ``CachePolicy``
  (decode-time KV methods: Look-M, DyCoke's dynamic KV pruning), run by the same hooks.
* ``rope_queries`` / ``cached_keys``: the RoPE-applied queries of a few rows and a layer's cached keys, for
  cache policies that score entries from the attention the layer really computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .prune import apply_rope, attention_column_sums, select_tokens, top_k_sorted, visual_token_scores


def get_cache(kwargs: dict):
    """The KV cache passed to a layer (transformers renamed ``past_key_values`` to ``cache`` in 5.24)."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cut_cache(cache, layer_ids: Sequence[int], index: torch.Tensor) -> None:
    """Keep only sequence positions ``index`` in the K/V of the given layers of a ``DynamicCache``."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise NotImplementedError(f"KV-cache surgery supports transformers' DynamicCache, got {type(cache).__name__}")
    for i in layer_ids:
        layer = layers[i]
        if type(layer).__name__ != "DynamicLayer":
            raise NotImplementedError(
                f"KV-cache surgery supports full-attention DynamicLayer caches, got {type(layer).__name__} at layer {i}")
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        idx = index.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


def _qk_pre_rope(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor):
    """Layer-normed ``hidden`` (1, N, D) -> pre-RoPE queries (H, R, d) for ``rows`` and keys (H, N, d)."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)[0]                                     # (N, D)
    head_dim = attn.head_dim
    q = attn.q_proj(normed[rows]).view(rows.numel(), -1, head_dim).transpose(0, 1)   # (H, R, d)
    k = attn.k_proj(normed).view(normed.shape[0], -1, head_dim).transpose(0, 1)      # (Hkv, N, d)
    if getattr(attn, "q_norm", None) is not None:                                 # Qwen3-style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    groups = q.shape[0] // k.shape[0]
    if groups > 1:                                                                # GQA: head h uses kv head h // groups
        k = k.repeat_interleave(groups, dim=0)
    return q, k


def query_rows(n: int, query_start: int, query: str, device=None) -> torch.Tensor:
    """Sequence indices of the query rows that score the visual tokens.

    ``"after_video"``: every token from ``query_start`` on (PruneVid; the last token if there is none);
    ``"last"``: the last token only (FastV's official code); ``"all"``: every token (FastV's paper).
    """
    if query == "after_video":
        return torch.arange(min(query_start, n - 1), n, device=device)
    if query == "last":
        return torch.tensor([n - 1], device=device)
    if query == "all":
        return torch.arange(n, device=device)
    raise ValueError(f"query must be 'after_video', 'last' or 'all', got {query!r}")


def rope_rows(x: torch.Tensor, position_embeddings: Optional[tuple], rows: Optional[torch.Tensor] = None):
    """Apply the layer's RoPE (cos, sin of shape (1, N, d)) to (H, R, d) rows ``rows`` (default: all)."""
    if position_embeddings is None:
        raise ValueError("this scoring needs the layer's position embeddings (RoPE cos/sin)")
    cos, sin = (t[0] for t in position_embeddings)
    if rows is not None:
        cos, sin = cos[rows], sin[rows]
    return apply_rope(x, cos, sin)


def score_at_layer(layer: torch.nn.Module, hidden: torch.Tensor, visual: slice, query_start: int, *,
                   scoring: str = "official", reduce: str = "max",
                   position_embeddings: Optional[tuple] = None, query: str = "after_video",
                   block: int = 256) -> torch.Tensor:
    """Score of each visual token at this decoder layer, from the layer's own q/k (no N x N matrix).

    Args:
        hidden: (1, N, D) the layer's input hidden states.
        visual: slice of the visual positions; ``query_start``: first post-video position.
        scoring: ``"official"`` (PruneVid: pre-RoPE, unmasked) or ``"rope_causal"`` (RoPE applied, causal
            rows: the attention map the layer itself computes; FastV).
        query: which rows score (``query_rows``). With ``"all"`` the rows are summed block by block
            (``attention_column_sums``) and ``reduce`` must be ``"mean"`` (mean over heads and rows).
        position_embeddings: the layer's (cos, sin), needed for ``"rope_causal"``.

    Returns:
        (N_visual,) scores, in the model dtype for the max reduction (as PruneVid's official code, whose
        float32 softmax is cast to the model dtype before the max), float32 for the mean.
    """
    n = hidden.shape[1]
    rows = query_rows(n, query_start, query, hidden.device)
    with torch.no_grad():
        q, k = _qk_pre_rope(layer, hidden, rows)
        positions = None
        if scoring == "rope_causal":
            q = rope_rows(q, position_embeddings, rows)
            k = rope_rows(k, position_embeddings)
            positions = rows
        elif scoring != "official":
            raise ValueError(f"unknown scoring {scoring!r}")
        if query == "all":
            if reduce != "mean":
                raise ValueError("query='all' supports reduce='mean' only (block-wise column sums)")
            sums = attention_column_sums(q, k, scaling=layer.self_attn.scaling, query_positions=positions,
                                         block=block)
            return sums.sum(dim=0)[visual] / (q.shape[0] * q.shape[1])
        return visual_token_scores(q, k, visual, scaling=layer.self_attn.scaling, query_positions=positions,
                                   reduce=reduce, out_dtype=hidden.dtype)


def rope_queries(layer: torch.nn.Module, hidden: torch.Tensor, rows: torch.Tensor,
                 position_embeddings: Optional[tuple]) -> torch.Tensor:
    """(1, N, D) layer input -> (H, R, d) queries of ``rows`` with the layer's RoPE applied."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)[0]
    q = attn.q_proj(normed[rows]).view(rows.numel(), -1, attn.head_dim).transpose(0, 1)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    return rope_rows(q, position_embeddings, rows)


def cached_keys(cache, i: int, heads: int) -> torch.Tensor:
    """Keys of layer ``i`` in the cache (already rotated), batch 0, repeated to ``heads`` (GQA): (H, N, d)."""
    k = cache.layers[i].keys[0]
    groups = heads // k.shape[0]
    return k.repeat_interleave(groups, dim=0) if groups > 1 else k


@dataclass
class Stage2Plan:
    """What one prefill needs for in-LLM pruning (sequence indices refer to the LLM input of that prefill).

    Layer ``layer`` (0-indexed) runs on every token and scores the visual ones with its own q/k; layers
    ``layer + 1..`` run on the kept ones, and the KV cache of layers ``0..layer`` is cut to them (so every
    layer caches the same entries). PruneVid: ``layer = selected_layer``, ``query="after_video"``,
    ``select="groups"``. FastV: ``layer = K - 1``, ``scoring="rope_causal"``, ``query="last"``,
    ``reduce="mean"``, ``select="topk"``.
    """

    seq_len: int
    visual_start: int
    visual_len: int
    query_start: int
    static_sizes: List[int]
    dynamic_sizes: List[int]
    window_sizes: List[int]
    alpha: float
    layer: int
    scoring: str = "official"
    reduce: str = "max"
    query: str = "after_video"                     # query rows (``query_rows``): "after_video" | "last" | "all"
    select: str = "groups"                         # "groups": floor(alpha n) per group; "topk": global top n_keep
    n_keep: Optional[int] = None                   # visual tokens kept by select="topk"
    keep: Optional[torch.Tensor] = None            # sequence indices kept after layer K (text + kept visual)
    kept_visual: Optional[int] = None
    scores: Optional[torch.Tensor] = None          # (visual_len,) stage-2 scores, kept for inspection


class CachePolicy:
    """Decode-time / post-prefill KV-cache behaviour of a method (Look-M, DyCoke's stage 2), run by
    ``LayerPruner``'s hooks. ``phase`` is ``"prefill"`` during the prefill that set it up and ``"decode"``
    for the following steps (the model file flips it). Subclasses override what they need:

    * ``after_prefill_layer(i, layer, hidden_in, kwargs, cache)``: after decoder layer ``i`` ran on the
      prefill (its K/V are in ``cache.layers[i]``); may rewrite that layer's cache (eviction, merging).
    * ``after_decode_layer(i, layer, hidden_in, kwargs, cache)``: after layer ``i`` ran on a decode step.
    * ``before_decode_layer(i, layer, kwargs, cache)``: may return new kwargs for layer ``i`` of a decode
      step (e.g. an attention mask that hides cache entries).
    """

    phase: str = "prefill"
    info: Optional[dict] = None

    def after_prefill_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        pass

    def after_decode_layer(self, i, layer, hidden_in, kwargs, cache) -> None:
        pass

    def before_decode_layer(self, i, layer, kwargs, cache) -> Optional[dict]:
        return None

    def kept_positions(self) -> Optional[torch.Tensor]:
        """Prefill positions (LLM-input terms) still in the last layer's cache, if the policy cut it: (T',), or
        (H_kv, T') when each KV head keeps its own entries (Look-M; the same count per head)."""
        return None


class LayerPruner:
    """Hooks on ``layers`` that carry out an armed ``Stage2Plan`` and/or a ``CachePolicy``; inert otherwise."""

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self.layers = list(layers)
        self.plan: Optional[Stage2Plan] = None
        self.policy: Optional[CachePolicy] = None
        self._memo: dict = {}
        self._seen: Optional[list] = None           # sequence length each layer ran on, while recording
        self._handles = []
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._make_post_hook(i), with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.plan = None
        self.policy = None

    def set_policy(self, policy: Optional[CachePolicy]) -> None:
        self.policy = policy

    def arm(self, plan: Stage2Plan) -> None:
        if plan.layer >= len(self.layers):
            raise ValueError(f"selected_layer={plan.layer} but the LLM has {len(self.layers)} layers (0..{len(self.layers) - 1})")
        self.plan, self._memo = plan, {}

    def disarm(self) -> Optional[Stage2Plan]:
        plan, self.plan, self._memo = self.plan, None, {}
        return plan

    def start_record(self) -> None:
        """Record the sequence length every layer runs on until ``stop_record`` (one prefill)."""
        self._seen = [None] * len(self.layers)

    def stop_record(self) -> Optional[list]:
        seen, self._seen = self._seen, None
        return seen

    # -- hooks ----------------------------------------------------------------------------------------------
    def _slice(self, obj, idx: torch.Tensor, dims: int):
        """Slice ``obj`` along its sequence dimension(s), once per object per prefill."""
        key = id(obj)
        if key not in self._memo:
            self._memo[key] = (obj, _index_seq(obj, idx, dims))     # keep obj alive so the id stays unique
        return self._memo[key][1]

    def _make_pre_hook(self, i: int) -> Callable:
        def hook(module, args, kwargs):
            if self._seen is not None:
                self._seen[i] = int((args[0] if args else kwargs["hidden_states"]).shape[1])
            plan = self.plan
            if plan is None:
                policy = self.policy
                if policy is not None and policy.phase == "decode":
                    new = policy.before_decode_layer(i, module, kwargs, get_cache(kwargs))
                    if new is not None:
                        return args, new
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if i == plan.layer and hidden.shape[1] == plan.seq_len:
                self._select(module, hidden, kwargs)
                return None
            if i <= plan.layer or plan.keep is None:
                return None
            pe = kwargs.get("position_embeddings")
            if pe is not None and pe[0].shape[-2] == plan.seq_len:
                kwargs["position_embeddings"] = tuple(self._slice(t, plan.keep, 1) for t in pe)
            pos = kwargs.get("position_ids")
            if isinstance(pos, torch.Tensor) and pos.shape[-1] == plan.seq_len:
                kwargs["position_ids"] = self._slice(pos, plan.keep, 1)
            mask = kwargs.get("attention_mask")
            if mask is not None:
                if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
                    raise NotImplementedError(f"stage 2 cannot slice an attention mask of type {type(mask).__name__}")
                if mask.shape[-1] == plan.seq_len:
                    kwargs["attention_mask"] = self._slice(mask, plan.keep, 2)
            return args, kwargs
        return hook

    def _make_post_hook(self, i: int) -> Callable:
        def hook(module, args, kwargs, output):
            policy = self.policy
            if policy is not None:
                hidden_in = args[0] if args else kwargs["hidden_states"]
                if policy.phase == "prefill":
                    policy.after_prefill_layer(i, module, hidden_in, kwargs, get_cache(kwargs))
                else:
                    policy.after_decode_layer(i, module, hidden_in, kwargs, get_cache(kwargs))
            plan = self.plan
            if plan is None or i != plan.layer or plan.keep is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            if hidden.shape[1] != plan.seq_len:
                return None
            cache = get_cache(kwargs)
            if cache is not None:
                cut_cache(cache, range(plan.layer + 1), plan.keep)
            hidden = hidden.index_select(1, plan.keep)
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        return hook

    def _select(self, layer, hidden, kwargs) -> None:
        plan = self.plan
        visual = slice(plan.visual_start, plan.visual_start + plan.visual_len)
        scores = score_at_layer(layer, hidden, visual, plan.query_start, scoring=plan.scoring,
                                reduce=plan.reduce, position_embeddings=kwargs.get("position_embeddings"),
                                query=plan.query)
        if plan.select == "groups":
            kept = select_tokens(scores, plan.static_sizes, plan.dynamic_sizes, plan.window_sizes, plan.alpha)
        elif plan.select == "topk":
            kept = top_k_sorted(scores, plan.n_keep if plan.n_keep is not None else plan.visual_len)
        else:
            raise ValueError(f"unknown selection {plan.select!r}")
        dev = hidden.device
        plan.keep = torch.cat([torch.arange(plan.visual_start, device=dev), plan.visual_start + kept.to(dev),
                               torch.arange(visual.stop, plan.seq_len, device=dev)])
        plan.kept_visual = int(kept.numel())
        plan.scores = scores


def _index_seq(t: torch.Tensor, idx: torch.Tensor, dims: int) -> torch.Tensor:
    """Keep sequence positions ``idx``: rotary cos/sin (B, N, d) on dim -2, position ids (.., N) on dim -1,
    and with ``dims=2`` a (B, 1, N, N) mask on both of its last dimensions."""
    idx = idx.to(t.device)
    if dims == 2:                                                   # (B, 1, N, N) mask
        return t.index_select(-2, idx).index_select(-1, idx)
    if t.dim() >= 3 and t.dtype.is_floating_point:                  # rotary (B, N, d)
        return t.index_select(-2, idx)
    return t.index_select(-1, idx)                                  # position ids (B, N) or (3, B, N)
