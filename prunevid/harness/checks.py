"""Divergence check: a method that claims to prune must change the kept token count (and, optionally, the
predictions); a method at no-op settings must leave the logits bit-identical. A silently inactive method is
an error (``SilentlyInactiveError``), never a quiet "same as unpruned" result.
"""
from __future__ import annotations

import torch

from .. import state as kit_state


class SilentlyInactiveError(AssertionError):
    """A method claimed to prune but every token count (and the outputs) stayed as unpruned."""


def _generate(model, inputs, steps: int):
    out = model.generate(**inputs, max_new_tokens=steps, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:]


def divergence_check(model, inputs: dict, method: str = "prunevid", config=None, *, decode_steps: int = 2,
                     require_prediction_change: bool = False, **params) -> dict:
    """Run ``inputs`` unpatched and patched with ``method``; return a record, raise when the method is inert.

    Checks: when the method claims to prune (``Method.prunes``), some count must drop below
    ``visual_tokens_in`` — tokens after the pre-LLM reduction, after in-LLM pruning, visual KV entries after the
    prefill, or visual entries attended by decode steps (DyCoke) — else ``SilentlyInactiveError``. With
    ``require_prediction_change`` the greedy continuation (``decode_steps`` tokens) must differ too (use at
    low budgets on real models). When the method does not claim to prune, the prefill logits must be
    bit-identical to the unpatched model's. The model is left unpatched.
    """
    import prunevid
    prunevid.remove(model)
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = _generate(model, inputs, decode_steps) if decode_steps else None
        prunevid.apply(model, config, method=method, **params)
        try:
            out = model(**inputs).logits
            stats = prunevid.stats(model)
            gen = _generate(model, inputs, decode_steps) if decode_steps else None
            info = prunevid.patch.info(model)
            prunes = kit_state.active_method(model).prunes
        finally:
            prunevid.remove(model)
    n_in = stats["visual_tokens_in"]
    counts = {k: stats.get(k) for k in ("visual_tokens_stage1", "visual_tokens_stage2", "kv_visual_tokens")}
    counts["decode_visual_kv_attended"] = info.get("decode_visual_kv_attended")
    reduced = [k for k, v in counts.items() if v is not None and n_in is not None and v < n_in]
    logits_identical = ref.shape == out.shape and bool(torch.equal(ref, out))
    pred_changed = None if gen is None else not torch.equal(ref_gen, gen)
    record = {"method": method, "claims_to_prune": prunes, "visual_tokens_in": n_in, **counts,
              "reduced": reduced, "logits_identical": logits_identical, "prediction_changed": pred_changed}
    if prunes and not reduced:
        raise SilentlyInactiveError(f"method {method!r} claims to prune but kept every visual token: {record}")
    if prunes and require_prediction_change and pred_changed is False:
        raise SilentlyInactiveError(f"method {method!r} pruned {reduced} but the greedy prediction is unchanged: "
                                    f"{record}")
    if not prunes and not logits_identical:
        raise AssertionError(f"method {method!r} at no-op settings changed the logits: {record}")
    return record
