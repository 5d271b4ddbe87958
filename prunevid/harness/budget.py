"""Matched budgets: drive every method to one target retained ratio (``retain``), report what it achieved.

``budget_params(method, retain)`` maps the target to the method's parameters, or says why it cannot:

============  ==========================================================================================
prunevid      ``retain``: alpha searched per video on the stage-1 groups (largest alpha on a 0.001 grid
              keeping <= target); when stage 1 alone is below the target, ``cluster_ratio`` and then ``tau``
              are raised first (``prunevid.methods.prunevid_method``; the settings used are reported)
random        ``retain`` (its own knob)
fastv         ``retain``: R = 1 - retain (tokens after layer K; layers 0..K-1 still see all tokens)
visionzip     ``retain`` (per-frame share, its own knob)
vidcom2       ``retain`` (R_RATIO, its own knob)
dycoke        ``retain``: per video, the largest count n of each compared frame of its temporal merging that
              keeps <= target (K = 1 - (n + 0.5)/P); **unreachable below whole/F**, the share of the frames
              it keeps whole (9/32 at 32 frames, 5/16 at 16, 3/8 at 8): reported per video
              (``prunevid.methods.dycoke``)
prumerge+     ``retain``: the kit's fixed-count option (outliers + evenly spaced samples up to floor(retain P)
              per frame; the outliers may already exceed it: then reported). Upstream's default, the adaptive
              stride, has no budget knob
prumerge      **unreachable**: the kept count is adaptive (IQR outliers)
lookm         ``retain`` as its KV budget: the cache keeps the text plus floor(retain x N_v) visual entries, split
              between heavy hitters and the recent window as hh_ratio : recent_ratio (upstream's 1:1); the
              prefill keeps 100% of the tokens (FLOPs 1.00x)
none          unreachable below 1
============  ==========================================================================================

``run_at_budget`` applies, runs one prefill and returns the record with the *achieved* ratio (visual tokens
after the LLM's pruning / visual tokens in; for Look-M the visual KV entries / visual tokens in), never the
target, and an analytic prefill FLOPs ratio (the papers' 4nd^2 + 2n^2d + 2ndm convention over the token counts
each decoder layer recorded: ``prunevid.harness.flops.flops_ratio_of_run``).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import flops

UNREACHABLE = {
    "prumerge": "PruMerge's kept count is adaptive (IQR outliers per frame); it cannot be driven to a budget",
    "none": "no pruning",
}


def budget_params(method: str, retain: float) -> tuple:
    """(params or None, note or None) for ``method`` at target ``retain``."""
    if not 0.0 < retain <= 1.0:
        raise ValueError(f"retain must be in (0, 1], got {retain}")
    if method in UNREACHABLE and not (method == "none" and retain == 1.0):
        return None, UNREACHABLE[method]
    if method == "none":
        return {}, None
    note = "KV-cache budget: the prefill runs on all tokens (FLOPs 1.00x)" if method == "lookm" else None
    if method == "prumerge+":
        note = ("PruMerge+ at a budget uses the kit's fixed-count option (retain=), not upstream's adaptive "
                "stride rule")
    return {"retain": retain}, note


def achieved_ratio(method: str, stats: dict) -> Optional[float]:
    n_in = stats.get("visual_tokens_in")
    if not n_in:
        return None
    if method == "lookm":
        return stats["kv_visual_tokens"] / n_in
    return stats.get("retained_ratio")


def run_at_budget(model, inputs: dict, method: str, retain: float, *, tolerance: float = 0.05,
                  **extra) -> dict:
    """Apply ``method`` at ``retain`` (plus ``extra`` parameters), run one prefill, report.

    Record: ``method``, ``target``, ``params``, ``achieved`` (None when not run), ``reachable`` (False when the
    method cannot be driven to the budget or lands more than ``tolerance`` away from it), ``note``, ``stats``.
    The model is left unpatched.
    """
    import prunevid
    params, note = budget_params(method, retain)
    record = {"method": method, "target": retain, "params": params, "achieved": None, "reachable": False,
              "note": note, "stats": None, "flops_ratio_analytic": None}
    if params is None:
        return record
    prunevid.apply(model, method=method, **params, **extra)
    try:
        with torch.no_grad():
            model(**inputs)
        stats = prunevid.stats(model)
        info = prunevid.patch.info(model)
    finally:
        prunevid.remove(model)
    achieved = achieved_ratio(method, stats)
    record.update(stats=stats, achieved=achieved, flops_ratio_analytic=flops.flops_ratio_of_run(
        flops.LLMShape.from_config(model.config), stats, formula="paper"))
    budget = info.get("budget")
    reachable = achieved is not None and abs(achieved - retain) <= tolerance
    if budget is not None and not budget.get("reachable", True):
        reachable = False
        note = budget.get("note") or note
    if not reachable and note is None:
        note = f"achieved {achieved:.3f} is more than {tolerance} away from the target {retain}"
    record.update(reachable=reachable, note=note)
    return record
