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
pdrop         ``retain``: the visual tokens per decoder layer averaged over the prefill / visual tokens in (lam
              solved per video, ``prunevid.methods.pdrop``); achieved = that mean of the record; the final KV
              ratio is in ``info["pdrop"]``; unreachable below what the layers before the first cut see (reported)
divprune      ``retain`` (its own knob, upstream's SUBSET_RATIO)
fastvid       ``retain`` (its own knob, upstream's retention_ratio: int(P x retain) a frame; achieved <= that)
holitom       ``retain``: the visual tokens per decoder layer averaged over the prefill / visual tokens in (its
              ``ratio`` solved per video, ``prunevid.methods.holitom``); the final KV ratio in ``info["holitom"]``;
              unreachable where its static windows alone merge more than asked (reported)
framefusion   ``retain`` sets ``cost`` (upstream's own knob): the visual tokens per decoder layer averaged over the
              prefill / visual tokens in, reached by its cost rule where the budget binds; a ceiling: where the
              similarity merges alone go further it lands lower (reported); final KV ratio in ``info["framefusion"]``
none          unreachable below 1
============  ==========================================================================================

``run_at_budget`` applies, runs one prefill and returns the record with the *achieved* ratio (visual tokens
after the LLM's pruning / visual tokens in; for Look-M the visual KV entries / visual tokens in), never the
target, and an analytic prefill FLOPs ratio (the papers' 4nd^2 + 2n^2d + 2ndm convention over the token counts
each decoder layer recorded: ``prunevid.harness.flops.flops_ratio_of_run``).

**Matched compute** (``solve_flops``, ``FlopsMatcher``, ``run_at_flops``; the runner's ``--flops``): a target LLM
prefill FLOPs ratio, in the papers' convention (``4nd^2 + 2n^2d + 2ndm`` per layer, text tokens included, the
prefill against the unpruned prefill of the same input: ``flops_ratio_of_run(..., formula="paper")``), is met by
solving the method's own ``retain`` knob by bisection on the schedule it declares (``Method.schedule``, through
``flops.analytic_ratio``) for the model's shape and the token counts of the actual input, one prompt at a time
(prompts differ in their text length, and the text is never pruned). Methods whose prefill no budget makes cheaper
(``FLOPS_UNREACHABLE``) and targets beyond what the schedule can reach are reported with the reason; a prompt whose
target lies within ``FLOPS_SLACK`` beyond the reach runs at the nearest end of the method's range, marked short;
farther out the run stops with the reason.
A method's own rule may also stop short of the solved retain (DyCoke's whole frames): its row says so. PruneVid:
stage 1 keeps what the video and its settings decide, so the tokens entering the LLM are measured first by a
probe (the prefill run up to the first decoder layer, at the smallest budget, whose stage 1 is the one any solved
budget runs); ``retain`` (its in-LLM cut, alpha searched per video as above) is then solved for layers 0..K on
the stage-1 tokens and K+1.. on the kept ones. What a run reports is the achieved ratio of its record, never the
target.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import state as kit_state
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
    """The ratio ``method``'s budget is met on (its ``Method.budget_measure``: retained tokens, the per-layer
    average of a multi-stage method, the KV entries of a cache method), from a prefill's stats."""
    from ..methods import method_class
    from ..methods.base import budget_ratio
    return budget_ratio(method_class(method).budget_measure, stats)


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


# ----------------------------------------------------------------------------------------------------------
# Matched compute: a target prefill FLOPs ratio
# ----------------------------------------------------------------------------------------------------------

FLOPS_FORMULA = "paper"          # the papers' per-layer estimate (FastV, the PruneVid README), text included
# How far beyond a method's reach (in FLOPs ratio, 0.02 = 2% of the unpruned prefill) a prompt's target may lie and
# still run, at the nearest end of the method's range (one visual token kept, or all it may keep), its row marked
# short. Prompts differ in their text length and (PruneVid) in what stage 1 lets in, so a target that suits most
# items can lie just outside a few; farther out the run would measure another setting than the one asked for
# (FastV keeping one token after its cut, PruneVid at a fraction of the target), so it stops with the reason.
FLOPS_SLACK = 0.02
FLOPS_UNREACHABLE = {
    "none": "no pruning: its prefill costs 1.00x the unpruned prefill",
    "lookm": "Look-M prunes the KV cache after a prefill on every token: its prefill costs 1.00x at any budget",
    "prumerge": UNREACHABLE["prumerge"],
}


class FlopsUnreachable(ValueError):
    """A FLOPs target the method cannot reach (a ``ValueError``: the CLI prints it as one ``error:`` line)."""


def check_flops_target(target) -> float:
    """``target`` as a float in (0, 1]; a ``ValueError`` naming the range otherwise."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0 \
            or math.isnan(target):
        raise ValueError(f"a FLOPs target is a share of the unpruned prefill's FLOPs in (0, 1], got {target!r}")
    return float(target)


def flops_static_reason(method: str, target: float, config=None) -> Optional[str]:
    """Why ``method`` cannot be driven to a FLOPs ``target`` whatever the input (``None`` when it may be): a method
    of ``FLOPS_UNREACHABLE`` (``none`` reaches 1.0 only), or a config (instance or class) without a ``retain``
    knob."""
    import dataclasses
    if method == "none":
        return None if target == 1.0 else FLOPS_UNREACHABLE["none"]
    if method in FLOPS_UNREACHABLE:
        return FLOPS_UNREACHABLE[method]
    if config is not None and "retain" not in {f.name for f in dataclasses.fields(config)}:
        return f"{method} has no budget knob (retain) to solve for a FLOPs target"
    return None


def _declared_ratio(shape: "flops.LLMShape", method: str, config, retain: float, n_visual: float, n_text: float,
                    entering: Optional[float]) -> tuple:
    """(paper FLOPs ratio, per-layer visual tokens) of the schedule ``method`` declares at ``retain``."""
    res = flops.analytic_ratio(shape, method, n_visual, n_text=n_text, formula=FLOPS_FORMULA,
                               config=config.replace(retain=retain), entering=entering)
    return res["flops_ratio"], [t - n_text for t in res["schedule"]]


def _below_floor_note(method: str, config, target: float, floor: float, tokens: list, n_text: float) -> str:
    """Why the cheapest budget still costs more than the target: the layers before the method's cut, else the
    text (never pruned)."""
    # the layers that run on every visual token: up to the first cut (a multi-stage plan cuts again later)
    before = next((i for i, t in enumerate(tokens) if t < tokens[0]), 0)
    note = (f"{method} cannot cost as little as {target:g}x the unpruned prefill here: keeping one visual token it "
            f"still costs {floor:.3f}x")
    if before:
        knob = {"fastv": f"K={getattr(config, 'K', None)}",
                "prunevid": f"selected_layer={getattr(config, 'selected_layer', None)}"}.get(method)
        layers = "decoder layer 0 runs" if before == 1 else f"decoder layers 0..{before - 1} run"
        note += (f", because {layers} on {tokens[0]:g} visual tokens before its cut"
                 + (f" ({knob}; a smaller one reaches lower)" if knob else ""))
    else:
        note += f" (the {n_text:g} text tokens are never pruned)"
    return note


def solve_flops(shape: "flops.LLMShape", method: str, target: float, n_visual: float, n_text: float, *,
                config=None, params: Optional[dict] = None, entering: Optional[float] = None,
                slack: float = FLOPS_SLACK) -> dict:
    """The ``retain`` at which ``method``'s declared schedule costs ``target`` x the unpruned LLM prefill (paper
    formula, text included) for ``n_visual`` visual and ``n_text`` text tokens on a decoder of ``shape``.

    ``config``: the method's resolved config (as a run holds it; default ``make_config(method, params)`` at the
    shape's depth). ``entering``: the visual tokens entering the LLM where the video decides them (PruneVid's
    stage 1; ``probe_entering``); the in-LLM cut then keeps at most that many. The ratio is monotone in
    ``retain``, which is bisected between one kept token (``1 / n_visual``) and all it may keep; of the two
    ends of the last step the one closer to the target is taken (a count rounded down, as FastV's
    ``floor(retain x n)``, makes the ratio a staircase).

    A target outside ``[floor, ceiling]`` (the declared ratio at the smallest / largest retain) is unreachable
    (``reachable`` False, ``note`` says why); within ``slack`` of the range it still gets the nearest end as its
    ``retain`` (to be run and reported short of the target), farther out ``retain`` is None (not to be run).

    Returns ``method``, ``target``, ``formula``, ``retain`` (None when not to be run, or for ``none`` at 1.0),
    ``predicted`` (the declared ratio at that retain), ``floor``, ``ceiling``, ``n_visual``, ``n_text``,
    ``entering``, ``reachable`` and ``note``.
    """
    from .. import methods
    target = check_flops_target(target)
    if config is None:
        config = methods.make_config(method, params, n_layers=shape.layers)
    rec = {"method": method, "target": target, "formula": FLOPS_FORMULA, "retain": None, "predicted": None,
           "floor": None, "ceiling": None, "n_visual": n_visual, "n_text": n_text, "entering": entering,
           "reachable": False, "note": flops_static_reason(method, target, config)}
    if method == "none" and rec["note"] is None:
        rec.update(predicted=1.0, floor=1.0, ceiling=1.0, reachable=True)
        return rec
    if rec["note"] is not None:
        return rec
    if n_visual < 1:
        rec["note"] = "the input holds no visual tokens"
        return rec
    lo = 1.0 / n_visual                                   # one visual token kept
    hi = 1.0 if entering is None else min(1.0, entering / n_visual)   # an in-LLM cut keeps at most what entered
    floor, floor_tokens = _declared_ratio(shape, method, config, lo, n_visual, n_text, entering)
    ceiling, _ = _declared_ratio(shape, method, config, hi, n_visual, n_text, entering)
    rec.update(floor=floor, ceiling=ceiling)
    if ceiling - floor < 1e-12 and abs(target - floor) > 1e-12:
        rec["note"] = (f"{method}'s prefill cost does not depend on retain at these settings: it costs {floor:.3f}x "
                       f"the unpruned prefill here, not {target:g}x")
        return rec
    if target < floor - 1e-12:
        rec["note"] = _below_floor_note(method, config, target, floor, floor_tokens, n_text)
        if floor - target <= slack:                       # just out of reach: its cheapest setting, reported short
            rec.update(retain=lo, predicted=floor)
        return rec
    if target > ceiling + 1e-12:
        rec["note"] = (f"{method} cannot cost as much as {target:g}x the unpruned prefill here: at its largest budget "
                       f"it costs {ceiling:.3f}x"
                       + (f" (stage 1 lets {entering:g} of {n_visual:g} visual tokens into the LLM, and the in-LLM "
                          f"cut cannot keep more; stage1_min_ratio makes stage 1 keep more)"
                          if entering is not None and entering < n_visual else ""))
        if target - ceiling <= slack:                     # just out of reach: its dearest setting, reported short
            rec.update(retain=hi, predicted=ceiling)
        return rec
    f_lo, f_hi = floor, ceiling
    for _ in range(60):                                   # 2^-60 of the range: far below one token
        mid = (lo + hi) / 2
        f_mid, _ = _declared_ratio(shape, method, config, mid, n_visual, n_text, entering)
        if f_mid < target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    retain, predicted = (lo, f_lo) if abs(f_lo - target) < abs(f_hi - target) else (hi, f_hi)
    rec.update(retain=retain, predicted=predicted, reachable=True)
    return rec


def prompt_counts(model, inputs: dict) -> tuple:
    """(visual tokens, text tokens) of one prompt for a patched model, counted on its ``input_ids`` as the prefill
    records them (``stats["visual_tokens_in"]`` / ``["text_tokens"]``: one placeholder per visual feature; an
    image-newline is text)."""
    adapter = kit_state.get(model).adapter
    ids = inputs.get("input_ids")
    if ids is None or ids.shape[0] != 1:
        raise ValueError("a FLOPs budget needs one prompt's input_ids (batch size 1)")
    config = model.config
    if not hasattr(config, adapter.placeholder_attr):     # the attribute may sit on the inner multimodal module
        config = model.model.config
    n_vis = int((ids[0] == adapter.placeholder_id(config)).sum()) - int(adapter.has_newline)
    return n_vis, int(ids.shape[1]) - n_vis


class _StopBeforeDecoder(Exception):
    """Raised by the probe's hook on the first decoder layer: what enters the LLM is known by then."""


def probe_entering(model, inputs: dict) -> int:
    """Visual tokens the patched model's method lets into the LLM for ``inputs``: a prefill stopped at the first
    decoder layer (the vision encoder and the pre-LLM reduction run, the LLM does not). The RNG state is restored
    after it, so the prefill that follows draws what it would have drawn without the probe."""
    from .. import models
    impl = kit_state.active_method(model)
    if impl is None or not impl.enabled:
        return prompt_counts(model, inputs)[0]            # a no-op runs the unpatched forward: everything enters
    layers = models.spec_for(model).module.language_layers(model)
    reached = []

    def stop(module, args, kwargs):
        reached.append(True)
        raise _StopBeforeDecoder

    handle = layers[0].register_forward_pre_hook(stop, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            model(**inputs)
    except _StopBeforeDecoder:
        pass
    finally:
        handle.remove()
    red = kit_state.last_reduction(model)
    if not reached or red is None:
        raise RuntimeError("the probe did not reach the first decoder layer through the method's reduction")
    return red.num_tokens


def _reapply(model, method: str, config) -> None:
    """Patch ``model`` anew with ``config``, keeping the hints the caller gave for this item (the oracle's masks)."""
    import prunevid
    hints = kit_state.hints(model)
    prunevid.apply(model, config, method=method)
    if hints:
        kit_state.set_hints(model, **hints)


class FlopsMatcher:
    """A run's FLOPs budget: ``prepare`` before each prompt's prefill (its counts, PruneVid's probe, the solve, the
    method re-applied at the solved ``retain``), ``row_fields`` after it (what the row records). ``config`` is the
    method's resolved config without a ``retain`` (the run's); a method no budget makes cheaper is refused here."""

    def __init__(self, method: str, target: float, config):
        self.method, self.target, self.config = method, check_flops_target(target), config
        reason = flops_static_reason(method, self.target, config)
        if reason is not None:
            raise FlopsUnreachable(f"--flops {self.target:g}: {reason}")

    def _needs_probe(self, n_layers: int, n_visual: int, n_text: int) -> bool:
        """Whether the declared schedule needs the count entering the LLM from the video (PruneVid's stage 1)."""
        from .. import methods
        if self.method == "none":
            return False
        try:
            methods.build(self.method, self.config.replace(retain=1.0)).schedule(n_layers, n_text, n_visual)
        except ValueError:
            return True
        return False

    def prepare(self, model, inputs: dict) -> dict:
        """Solve this prompt's ``retain`` and patch ``model`` with it; the solve's record (``solve_flops``).
        ``FlopsUnreachable`` when the target is beyond the method's reach on this prompt."""
        shape = flops.LLMShape.from_config(model.config)
        n_visual, n_text = prompt_counts(model, inputs)
        entering = None
        if self._needs_probe(shape.layers, n_visual, n_text):
            # the smallest budget: its stage 1 is relaxed least (only up to one token or stage1_min_ratio), so any
            # solved budget (at most what entered) runs this same stage 1
            _reapply(model, self.method, self.config.replace(retain=1.0 / n_visual))
            entering = probe_entering(model, inputs)
        rec = solve_flops(shape, self.method, self.target, n_visual, n_text, config=self.config, entering=entering)
        if not rec["reachable"] and rec["retain"] is None:      # beyond reach by more than FLOPS_SLACK: stop
            raise FlopsUnreachable(f"--flops {self.target:g}: {rec['note']} (by more than {FLOPS_SLACK:g})")
        solved = self.config if rec["retain"] is None else self.config.replace(retain=rec["retain"])
        _reapply(model, self.method, solved)
        return rec

    def row_fields(self, model, rec: dict, stats: dict) -> dict:
        """What a row records of its prompt's budget: ``flops_target``, ``flops_retain`` (solved),
        ``flops_predicted`` (the declared ratio at it), ``flops_reachable`` and ``flops_note`` (False / why, where
        the target lay just beyond the method's reach, within ``FLOPS_SLACK``, and the prompt ran at the nearest
        end of its range; where the method's own rule stopped short of the solved retain: DyCoke's whole frames,
        PruneVid's smallest alpha; the note also says where stage 1 let in another count than the probe). The
        achieved ratio is the row's ``flops_ratio_paper``."""
        import prunevid
        budget = prunevid.patch.info(model).get("budget") or {}
        reachable, note = rec["reachable"], rec["note"]      # False / why: run at the nearest end (FLOPS_SLACK)
        if not budget.get("reachable", True):
            why = budget.get("note") or "the method's budget rule stopped short of the solved retain"
            reachable, note = False, why if note is None else f"{note}; {why}"
        if rec["entering"] is not None and stats.get("visual_tokens_stage1") != rec["entering"]:
            note = (f"stage 1 let {stats.get('visual_tokens_stage1')} visual tokens in, the probe "
                    f"{rec['entering']}") + (f"; {note}" if note else "")
        return {"flops_target": rec["target"], "flops_retain": rec["retain"], "flops_predicted": rec["predicted"],
                "flops_reachable": reachable, "flops_note": note}


def run_at_flops(model, inputs: dict, method: str, target: float, **extra) -> dict:
    """Apply ``method`` (plus ``extra`` parameters) with ``retain`` solved for a FLOPs ``target`` on ``inputs``, run
    one prefill, report (``run_at_budget``'s counterpart).

    Record: ``method``, ``target``, ``solve`` (``solve_flops``'s record), ``retain``, ``predicted``, ``achieved``
    (the paper-formula ratio of the prefill's record, ``flops_ratio_of_run``; None when not run), ``reachable``,
    ``note``, ``row`` (``FlopsMatcher.row_fields``), ``stats``. The model is left unpatched.
    """
    import prunevid
    from .. import methods
    target = check_flops_target(target)
    if "retain" in extra:
        raise ValueError("a FLOPs target solves retain: do not give one")
    record = {"method": method, "target": target, "solve": None, "retain": None, "predicted": None, "achieved": None,
              "reachable": False, "note": flops_static_reason(method, target, methods.config_class(method)),
              "row": None, "stats": None}
    if record["note"] is not None:
        return record
    if method != "none":                 # as the runner: the target stands in for retain until it is solved
        extra = {**extra, "retain": target}
    prunevid.apply(model, method=method, **extra)
    try:
        try:
            matcher = FlopsMatcher(method, target, kit_state.active_config(model))
            rec = matcher.prepare(model, inputs)
        except FlopsUnreachable as e:
            record["note"] = str(e)
            return record
        with torch.no_grad():
            model(**inputs)
        stats = prunevid.stats(model)
        row = matcher.row_fields(model, rec, stats)
    finally:
        prunevid.remove(model)
    achieved = flops.flops_ratio_of_run(flops.LLMShape.from_config(model.config), stats, formula=FLOPS_FORMULA)
    record.update(solve=rec, retain=rec["retain"], predicted=rec["predicted"], achieved=achieved, row=row,
                  stats=stats, reachable=row["flops_reachable"], note=row["flops_note"])
    return record
