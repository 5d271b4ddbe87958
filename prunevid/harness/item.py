"""One benchmark item -> one ``samples.jsonl`` row: its clip (through the media cache), each of its prompts
rendered and generated greedily (``prunevid.harness.generation``), the patch's statistics and FLOPs of the prefill, the
protocol's answer extraction and score."""
from __future__ import annotations

import time

import torch

from .. import state as kit_state
from . import generation
from .cache import uses_feature_cache


def eos_ids(loaded) -> set:
    ids = set()
    for src in (getattr(loaded.model, "generation_config", None), loaded.tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


def keywords_stop(tokenizer, keywords=("###", "USER")):
    """Upstream's ``KeywordsStoppingCriteria`` (``tasks/eval/model_utils.py``) as a ``stop(tokens)`` test: it is not
    consulted on the first generated token (its first call only records the prompt length) and then stops when
    EVERY keyword is in the decoded generated text (``skip_special_tokens``) — both, not either."""
    def stop(tokens) -> bool:
        if len(tokens) < 2:
            return False
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return all(k in text for k in keywords)
    return stop


def greedy_generate(model, inputs: dict, max_new_tokens: int, eos_ids: set, stop=None):
    """Greedy decoding (``generation.greedy_decode``) that also reads the patch's prefill statistics and their
    analytic FLOPs between the prefill and the first decode step.

    Returns (new token ids, prefill stats of the patch, prefill ms, decode ms per token).
    """
    import prunevid
    stats = {}

    def read_stats():
        if prunevid.is_patched(model):
            st = prunevid.stats(model)
            stats.update(st, **prefill_flops(model, st))

    tokens, prefill_ms, decode_ms = generation.greedy_decode(model, inputs, max_new_tokens, eos_ids, stop=stop,
                                                             after_prefill=read_stats)
    return tokens, stats, prefill_ms, decode_ms


def prefill_flops(model, stats: dict) -> dict:
    """Analytic LLM prefill FLOPs of the last prefill (``prunevid.harness.flops.analytic_from_run``, the kit's "exact"
    per-layer count over the layers' recorded token counts, reported as FLOPs = 2 x MACs) and their ratio to the
    unpruned prefill of the same prompt (``flops_ratio``); ``flops_ratio_paper``: the same ratio in the papers'
    formula, text included (the convention of a FLOPs target, ``prunevid.harness.budget``)."""
    from . import flops
    cfg = getattr(model, "config", None)
    if cfg is None or stats.get("layer_tokens") is None or stats.get("text_tokens") is None:
        return {}
    try:
        shape = flops.LLMShape.from_config(cfg)
    except AttributeError:
        return {}
    pruned = flops.analytic_from_run(shape, stats)
    full = flops.analytic_from_run(shape, stats, unpruned=True)
    return {"flops_prefill": 2 * pruned, "flops_ratio": pruned / full if full else None,
            "flops_ratio_paper": flops.flops_ratio_of_run(shape, stats, formula="paper")}


def _frames_error(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {msg}"


def _takes_encoded_video(model, inputs: dict) -> bool:
    """Whether the model can be fed pre-encoded video features: transformers' ``mm_encoder_outputs`` in its
    forward, a ``get_video_features(..., return_dict=True)`` on its inner model (PLLaVA has neither) and pixels
    as the only visual input (Qwen2-VL's also need ``video_grid_thw``: encoded by the model itself)."""
    import inspect
    if set(inputs) - {"input_ids", "attention_mask", "pixel_values_videos"}:
        return False
    inner = getattr(model, "model", None)
    fn = getattr(inner, "get_video_features", None)
    if fn is None or "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        return False
    params = inspect.signature(fn).parameters
    return "return_dict" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _encode(loaded, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own video features (what the patch receives as ``mm_encoder_outputs``), (1, F*P+1, C)."""
    with torch.no_grad():
        out = loaded.model.model.get_video_features(pixels, return_dict=True)
    return out.pooler_output


def _load_clip(bench, item, frames: int, protocol: str, cache):
    """(frames, short): the item's clip, and whether it had fewer frames than asked (sampled with repeated
    indices, ``video.ShortClipWarning``). Under ``short_clips="error"`` a short clip raises instead."""
    import warnings
    from .. import video
    from ..benchmarks.base import PROTOCOL_SAMPLING
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", video.ShortClipWarning)
        if cache is not None:
            key = cache.frames_key(item, frames, PROTOCOL_SAMPLING[protocol])
            clip = cache.frames(key, lambda: bench.frames(item, frames, protocol))
        else:
            key, clip = None, bench.frames(item, frames, protocol)
    short = [w for w in caught if issubclass(w.category, video.ShortClipWarning)]
    if short and bench.options.short_clips == "error":
        raise video.VideoError(str(short[0].message))
    for w in caught:                                      # recorded to be counted, still shown to the user
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if bench.options.video == "black":                    # the video-blind control (protocol option video=black)
        clip = clip * 0
    return clip, key, bool(short)


def run_item(bench, item, loaded, protocol: str, frames: int, gen: dict, eos_ids: set, seed: int,
             cache=None, method: str = "prunevid", compute=None) -> dict:
    """One item -> one samples.jsonl row. ``cache``: a ``prunevid.harness.cache.MediaCache`` (or None);
    ``compute``: a ``prunevid.harness.budget.FlopsMatcher`` (a FLOPs target: each prompt's ``retain`` solved before
    its prefill, the first prompt's ``flops_*`` fields in the row).

    The row records the exact ``prompt`` text the model received (the rendered template, the video placeholder
    written once; ``prompt2`` for VCG's second consistency question) and ``short_clip`` when the clip had
    fewer frames than asked. A method that reads hints (``Method.needs_hints``: the oracle's object masks) gets
    them from ``bench.hints`` for this item (``prunevid.state.set_hints``), cleared after its prompts."""
    torch.manual_seed(seed)
    row = {"id": item.id, "category": item.category, "prediction": None, "parsed": None,
           "answer": item.answer_letter if bench.multiple_choice else item.answer, "correct": None, "error": None}
    for key in bench.secondary_categories:
        row[key] = item.extra.get(key)
    if bench.multiple_choice and row["answer"] is not None:
        row["correct"] = False
    t0 = time.perf_counter()
    try:
        clip, key, short = _load_clip(bench, item, frames, protocol, cache)
    except Exception as e:   # missing / corrupt / too short: recorded, the run goes on
        row["error"] = _frames_error(e)
        row["unparsed"] = False
        row["time_s"] = time.perf_counter() - t0
        return row
    if short:
        row["short_clip"] = True
    stop = keywords_stop(loaded.tokenizer) if bench.stops_on_keywords(protocol) else None
    hinted = bool(needed_hints(loaded.model))
    if hinted:                     # ground truth the method reads (the oracle's object masks), for this item only
        kit_state.set_hints(loaded.model, **bench.hints(item, frames, protocol))
    try:
        preds, raws, prefill, decode, n_new, stats = _generate_prompts(bench, item, loaded, protocol, clip, key, gen,
                                                                       eos_ids, stop, cache, method, row, compute)
    finally:
        if hinted:
            kit_state.clear_hints(loaded.model)
    score = bench.score(item, preds, protocol)
    row.update(prediction=preds[0], parsed=score.parsed, correct=score.correct, unparsed=score.unparsed)
    if score.fallback:
        row["fallback_parsed"] = True
    if raws[0] != preds[0]:
        row["raw_prediction"] = raws[0]            # the generated text, before the protocol's answer extraction
    if len(preds) > 1:
        row["prediction2"] = preds[1]
    row.update({k: stats.get(k) for k in _stats_keys() + ("flops_prefill", "flops_ratio", "flops_ratio_paper")})
    row.update(prefill_ms=sum(prefill) / len(prefill), decode_ms_per_token=sum(decode) / len(decode) if decode else None,
               new_tokens=n_new, time_s=time.perf_counter() - t0)
    return row


def needed_hints(model) -> tuple:
    """The hints the patched model's method reads (``Method.needs_hints``), ``()`` when it reads none or is a
    no-op at its settings."""
    impl = kit_state.active_method(model)
    if impl is None or not getattr(impl, "enabled", True):
        return ()
    return tuple(getattr(impl, "needs_hints", ()) or ())


def _generate_prompts(bench, item, loaded, protocol, clip, key, gen, eos_ids, stop, cache, method, row, compute=None):
    """Each of the item's prompts rendered and generated greedily: (predictions, raw texts, prefill ms, decode
    ms per token, new tokens, the first prompt's prefill stats); the rendered prompts go into ``row``, and with a
    FLOPs target (``compute``) the first prompt's budget fields."""
    from .. import video
    preds, raws, prefill, decode, n_new, stats = [], [], [], [], 0, {}
    for i, prompt in enumerate(bench.prompts(item, protocol)):
        rendered = video.build_prompt(loaded.tokenizer, prompt.text, system=prompt.system,
                                      answer_prefix=prompt.answer_prefix)
        row["prompt" if i == 0 else f"prompt{i + 1}"] = rendered
        inputs = video.build_inputs(loaded, clip, prompt.text, system=prompt.system, answer_prefix=prompt.answer_prefix,
                                    rendered=rendered)
        if cache is not None and uses_feature_cache(method) and _takes_encoded_video(loaded.model, inputs):
            from transformers.modeling_outputs import BaseModelOutputWithPooling
            from .cache import model_key
            pixels = inputs.pop("pixel_values_videos")
            feats = cache.features(key, model_key(loaded.name, loaded.model.dtype, loaded.preprocessing,
                                                  getattr(loaded, "fingerprint", None)),
                                   lambda: _encode(loaded, pixels))
            inputs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(
                pooler_output=feats.to(device=pixels.device, dtype=pixels.dtype))}
        # a FLOPs target: this prompt's retain, solved on its own token counts (prompts differ in text length)
        solved = compute.prepare(loaded.model, inputs) if compute is not None else None
        toks, st, p_ms, d_ms = greedy_generate(loaded.model, inputs, gen["max_new_tokens"], eos_ids, stop=stop)
        if solved is not None and i == 0:
            row.update(compute.row_fields(loaded.model, solved, st))
        raws.append(loaded.tokenizer.decode(toks, skip_special_tokens=True))
        preds.append(bench.answer_text(raws[-1], protocol))
        prefill.append(p_ms)
        if d_ms is not None:
            decode.append(d_ms)
        n_new += len(toks)
        if i == 0:
            stats = st
    return preds, raws, prefill, decode, n_new, stats


def _stats_keys() -> tuple:
    from ..patch import STATS_KEYS
    return tuple(STATS_KEYS)
