"""Shared in-LLM mechanics, written once for every model and method that prunes inside the decoder.

* ``score_at_layer``: stage-2 scores for the visual tokens from a decoder layer's own q/k, forming only the
  post-video query rows (works under SDPA / flash attention: no layer runs eagerly, no N x N matrix).
* ``LayerPruner``: forward hooks on the decoder layers of one model instance. During an *armed* prefill it
  scores at layer K (pre-hook), cuts the hidden states and the KV cache of layers 0..K after layer K
  (post-hook), and slices the per-layer inputs (rotary cos/sin, position ids, a 4-D mask) of layers K+1..
  Kept tokens keep their original position ids. Decode steps are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .prune import apply_rope, select_tokens, visual_token_scores


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


def score_at_layer(layer: torch.nn.Module, hidden: torch.Tensor, visual: slice, query_start: int, *,
                   scoring: str = "official", reduce: str = "max",
                   position_embeddings: Optional[tuple] = None) -> torch.Tensor:
    """Stage-2 score of each visual token at this decoder layer.

    Args:
        hidden: (1, N, D) the layer's input hidden states.
        visual: slice of the visual positions; ``query_start``: first post-video position (queries are
            ``query_start..N-1``; if there is none, the last token is the query).
        scoring: ``"official"`` (pre-RoPE, unmasked) or ``"rope_causal"`` (RoPE applied, causal rows).
        position_embeddings: the layer's (cos, sin), needed for ``"rope_causal"``.

    Returns:
        (N_visual,) scores, in the model dtype for the official max reduction (as the official code, whose
        float32 softmax is cast to the model dtype before the max).
    """
    n = hidden.shape[1]
    rows = torch.arange(min(query_start, n - 1), n, device=hidden.device)
    with torch.no_grad():
        q, k = _qk_pre_rope(layer, hidden, rows)
        positions = None
        if scoring == "rope_causal":
            if position_embeddings is None:
                raise ValueError("scoring='rope_causal' needs the layer's position embeddings")
            cos, sin = (t[0] for t in position_embeddings)                        # (N, d)
            q = apply_rope(q, cos[rows], sin[rows])
            k = apply_rope(k, cos, sin)
            positions = rows
        elif scoring != "official":
            raise ValueError(f"unknown scoring {scoring!r}")
        return visual_token_scores(q, k, visual, scaling=layer.self_attn.scaling, query_positions=positions,
                                   reduce=reduce, out_dtype=hidden.dtype)


@dataclass
class Stage2Plan:
    """What one prefill needs for stage 2 (sequence indices refer to the LLM input of that prefill)."""

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
    keep: Optional[torch.Tensor] = None            # sequence indices kept after layer K (text + kept visual)
    kept_visual: Optional[int] = None
    scores: Optional[torch.Tensor] = None          # (visual_len,) stage-2 scores, kept for inspection


class LayerPruner:
    """Hooks on ``layers`` that carry out an armed ``Stage2Plan``; inert otherwise."""

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self.layers = list(layers)
        self.plan: Optional[Stage2Plan] = None
        self._memo: dict = {}
        self._handles = []
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._make_pre_hook(i), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._make_post_hook(i), with_kwargs=True))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.plan = None

    def arm(self, plan: Stage2Plan) -> None:
        if plan.layer >= len(self.layers):
            raise ValueError(f"selected_layer={plan.layer} but the LLM has {len(self.layers)} layers (0..{len(self.layers) - 1})")
        self.plan, self._memo = plan, {}

    def disarm(self) -> Optional[Stage2Plan]:
        plan, self.plan, self._memo = self.plan, None, {}
        return plan

    # -- hooks ----------------------------------------------------------------------------------------------
    def _slice(self, obj, idx: torch.Tensor, dims: int):
        """Slice ``obj`` along its sequence dimension(s), once per object per prefill."""
        key = id(obj)
        if key not in self._memo:
            self._memo[key] = (obj, _index_seq(obj, idx, dims))     # keep obj alive so the id stays unique
        return self._memo[key][1]

    def _make_pre_hook(self, i: int) -> Callable:
        def hook(module, args, kwargs):
            plan = self.plan
            if plan is None:
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
                                reduce=plan.reduce, position_embeddings=kwargs.get("position_embeddings"))
        kept = select_tokens(scores, plan.static_sizes, plan.dynamic_sizes, plan.window_sizes, plan.alpha)
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
