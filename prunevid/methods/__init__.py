"""Method registry: each name maps to a ``Method`` subclass (``prunevid.methods.base``) and its config dataclass.

Every method is one small module here: pure tensor functions for its token rule, a config dataclass with the
original defaults, and a ``Method`` subclass answering the model file's three questions (pre-LLM reduction,
in-LLM plan, KV-cache policy). Adding a method = its module plus one line in ``registry._METHODS``;
``resolve.make_config`` builds every config (names checked, model-dependent defaults resolved). Shared mechanics live in ``prunevid.layer_pruner`` / ``prunevid.prune`` and are never
copied here.
"""
from __future__ import annotations

from .base import ConfigMixin, Method, Reduction, SequenceLayout, VideoContext
from .registry import available, build, config_class, method_class
from .resolve import make_config

def kept_map(model):
    """(F, P) bool for the last prefill of a patched model: which input visual tokens survive as themselves or
    inside a kept merged token, after every stage (pre-LLM reduction, in-LLM pruning, a cache policy that cut
    the cache; with a per-KV-head cut (Look-M) a token is kept when any KV head keeps it). For drawing what each
    method keeps on the frames. ``None`` before any prefill."""
    import torch

    from .. import state as kit_state
    state = kit_state.get(model)
    red = state.last_reduction
    st = state.stats
    if red is None or not st.get("visual_tokens_in"):
        return None
    merge = red.info.get("merge")
    plan = state.last_plan
    if merge is not None:
        f, p = merge.assignment.shape
    elif red.kept is not None:
        f, p = red.kept.shape
    else:
        f = len(red.window_sizes) and sum(red.window_sizes)
        p = st["visual_tokens_in"] // f
    rows = None                                                   # surviving rows of red.tokens
    if plan is not None and plan.keep is not None:
        keep = plan.keep.cpu()
        rows = keep[(keep >= plan.visual_start) & (keep < plan.visual_start + plan.visual_len)] - plan.visual_start
    policy = state.pruner.policy if state.pruner is not None else None
    if policy is not None and policy.kept_positions() is not None and rows is None:
        # (T',) or (H_kv, T') where each KV head keeps its own entries (Look-M): a token counts as kept
        # when at least one KV head still holds it
        pos = policy.kept_positions().cpu().reshape(-1).unique()
        start = getattr(policy, "visual", slice(0, 0)).start
        stop = getattr(policy, "visual", slice(0, 0)).stop
        rows = pos[(pos >= start) & (pos < stop)] - start
    if merge is not None:
        assign = merge.assignment.cpu()
        return torch.ones(f, p, dtype=torch.bool) if rows is None else torch.isin(assign, rows)
    if red.kept is not None:
        return red.kept.cpu().clone()
    out = torch.ones(f * p, dtype=torch.bool)
    if rows is not None:
        out[:] = False
        out[rows] = True
    return out.view(f, p)


def __getattr__(name):  # backwards compatible: prunevid.methods.NoneConfig
    if name == "NoneConfig":
        from .none import NoneConfig
        return NoneConfig
    raise AttributeError(name)


__all__ = ["available", "config_class", "method_class", "build", "make_config", "kept_map", "Method", "Reduction", "SequenceLayout",
           "VideoContext", "ConfigMixin"]
