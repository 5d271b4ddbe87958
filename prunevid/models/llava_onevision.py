"""PruneVid on ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision and LLaVA-Video checkpoints).

What is model-specific lives here: where the video features come from (``get_video_features``: SigLIP,
projector, bilinear 2x pooling, one ``image_newline`` appended after all frames), how the prompt marks
them (one ``<video>`` placeholder per feature), and which modules are the decoder layers. The shared parts
are in ``prunevid.merge`` (stage 1), ``prunevid.llm`` (stage 2 hooks, cache surgery) and ``prunevid.patch``.

The patched inner model is called exactly like the original: ``input_ids`` hold the full number of
``<video>`` placeholders. At the prefill that carries ``pixel_values_videos`` it
  1. computes the frame features (F, P, C) and the newline, runs stage 1 on the frames,
  2. shortens the sequence: the first N1 placeholders receive the merged tokens, the last one the newline
     (never merged or pruned; counted as text), the surplus placeholders are dropped; positions are
     re-numbered 0..N1-1 over the merged sequence, as the official code does,
  3. arms stage 2 (``LayerPruner``) with the group sizes, and runs the language model.
Decode steps get their inputs remapped: positions shift by the number of tokens stage 1 removed (so the
first new token sits at the merged prefill length, as in the official code), and a full-length 2-D
attention mask is reduced to the kept columns.
"""
from __future__ import annotations

import inspect
import math

import torch

from ..merge import merge_video_tokens
from ..llm import Stage2Plan, get_cache
from ..patch import finish_stats, empty_stats

ARCHITECTURES = ("LlavaOnevisionForConditionalGeneration",)
DEFAULTS = {"frames": 32, "selected_layer": 10, "tokens_per_frame": 196, "protocol": "lmms-eval"}


def language_layers(model):
    return model.model.language_model.layers


def tokens_per_frame(config) -> int:
    side = config.vision_config.image_size // config.vision_config.patch_size
    return math.ceil(side / 2) ** 2


def num_video_tokens(config, num_frames: int) -> int:
    """Placeholders one video needs: frames x pooled tokens per frame + 1 image-newline."""
    return num_frames * tokens_per_frame(config) + 1


def patch(model, state) -> None:
    inner = model.model
    parent = type(inner)
    inner.__class__ = _patched_class(parent)
    inner._prunevid = state


def unpatch(model) -> None:
    inner = model.model
    if hasattr(inner, "_prunevid_parent"):
        inner.__class__ = inner._prunevid_parent
    inner.__dict__.pop("_prunevid", None)


_CLASS_CACHE: dict = {}


def _patched_class(parent: type) -> type:
    if parent in _CLASS_CACHE:
        return _CLASS_CACHE[parent]
    arg_names = [p for p in inspect.signature(parent.forward).parameters if p != "self"]

    def forward(self, *args, **kwargs):
        kwargs.update(zip(arg_names, args))
        return _forward(self, parent, kwargs)

    cls = type(f"PruneVid{parent.__name__}", (parent,), {"forward": forward, "_prunevid_parent": parent})
    _CLASS_CACHE[parent] = cls
    return cls


# ----------------------------------------------------------------------------------------------------------
def _forward(self, parent, kwargs):
    state = self._prunevid
    cfg = state.config
    active = getattr(cfg, "enabled", False)
    videos = kwargs.get("pixel_values_videos")
    input_ids = kwargs.get("input_ids")
    cache = get_cache(kwargs)
    past = cache.get_seq_length() if cache is not None else 0
    encoded = _encoded_video(kwargs)   # generate() encodes the video first and passes mm_encoder_outputs

    if videos is not None or encoded is not None:
        state.decode = None
        if not active:
            n_frames = videos.shape[1] if videos is not None else _encoded_frames(self, encoded)
            state.stats = _unpruned_stats(self, input_ids, n_frames)
            return parent.forward(self, **kwargs)
        return _pruned_prefill(self, parent, state, kwargs)

    dec = state.decode
    if dec is not None and past > 0 and past == dec["cache_len"]:
        kwargs = _remap_decode(kwargs, dec)
    elif past == 0:
        state.decode = None
    return parent.forward(self, **kwargs)


def _encoded_video(kwargs):
    """The video features ``generate()`` computed before the prefill (``mm_encoder_outputs["video"]``)."""
    mm = kwargs.get("mm_encoder_outputs")
    return mm.get("video") if isinstance(mm, dict) else None


def _encoded_frames(self, encoded) -> int:
    return (encoded.pooler_output[0].shape[0] - 1) // tokens_per_frame(self.config)


def _unpruned_stats(self, input_ids, n_frames: int) -> dict:
    stats = empty_stats()
    if input_ids is not None and input_ids.shape[0] == 1:
        n_vis = n_frames * tokens_per_frame(self.config)
        stats.update(visual_tokens_in=n_vis, visual_tokens_stage1=n_vis, visual_tokens_stage2=n_vis,
                     text_tokens=input_ids.shape[1] - n_vis)
    return finish_stats(stats)


def _pruned_prefill(self, parent, state, kwargs):
    cfg = state.config
    input_ids = kwargs.get("input_ids")
    videos = kwargs.get("pixel_values_videos")
    encoded = _encoded_video(kwargs)
    if input_ids is None:
        raise ValueError("the PruneVid patch needs input_ids (with the <video> placeholders), not inputs_embeds")
    n_videos = videos.shape[0] if videos is not None else len(encoded.pooler_output)
    if input_ids.shape[0] != 1 or n_videos != 1:
        raise ValueError(f"the PruneVid patch supports batch size 1 (one video per call), got input_ids of "
                         f"shape {tuple(input_ids.shape)} and {n_videos} videos")
    if kwargs.get("pixel_values") is not None or (kwargs.get("mm_encoder_outputs") or {}).get("image") is not None:
        raise ValueError("the PruneVid patch does not support images and a video in the same prompt")

    n_frames = videos.shape[1] if videos is not None else _encoded_frames(self, encoded)
    per_frame = tokens_per_frame(self.config)
    placeholders = (input_ids[0] == self.config.video_token_id).nonzero().squeeze(1)
    expected = n_frames * per_frame + 1
    if placeholders.numel() != expected:
        raise ValueError(f"the prompt holds {placeholders.numel()} <video> placeholders, but the video gives "
                         f"{expected} features ({n_frames} frames x {per_frame} tokens + 1 image-newline)")
    if int(placeholders[-1] - placeholders[0]) + 1 != expected:
        raise ValueError("the <video> placeholders of the prompt must be contiguous")

    if encoded is None:
        encoded = self.get_video_features(
            videos, vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"), return_dict=True)
    feats = encoded.pooler_output[0]                                          # (F*P + 1, C)
    frames = feats[:-1].view(n_frames, per_frame, -1)                         # (F, P, C)
    newline = feats[-1:]

    stats = empty_stats()
    stats.update(visual_tokens_in=n_frames * per_frame)
    if cfg.stage1:
        merged = merge_video_tokens(frames, tau=cfg.tau, temporal_segment_ratio=cfg.temporal_segment_ratio,
                                    cluster_ratio=cfg.cluster_ratio, k=cfg.k, generator=state.generator(),
                                    min_merge_size=cfg.min_merge_size)
        visual = merged.tokens
        sizes = (merged.static_sizes, merged.dynamic_sizes, merged.window_sizes)
        state.last_merge = merged
    else:  # stage 2 alone: every frame is one dynamic group of one segment
        visual = frames.reshape(-1, frames.shape[-1])
        sizes = ([0], [n_frames * per_frame], [n_frames])
        state.last_merge = None
    n_vis = visual.shape[0]
    stats.update(visual_tokens_stage1=n_vis, segments=list(sizes[2]), static_tokens=list(sizes[0]),
                 dynamic_tokens=list(sizes[1]))

    # Shorter sequence: text, the first n_vis placeholders, the newline placeholder, text.
    n_full = input_ids.shape[1]
    first = int(placeholders[0])
    device = input_ids.device
    keep1 = torch.cat([torch.arange(first + n_vis, device=device),
                       torch.arange(int(placeholders[-1]), n_full, device=device)])
    ids = input_ids[:, keep1]
    embeds = self.get_input_embeddings()(ids)
    embeds[0, first:first + n_vis] = visual.to(embeds.dtype)
    embeds[0, first + n_vis] = newline[0].to(embeds.dtype)
    n1 = ids.shape[1]

    mask = kwargs.get("attention_mask")
    new_kwargs = dict(kwargs, input_ids=None, inputs_embeds=embeds, pixel_values_videos=None, mm_encoder_outputs=None)
    if mask is not None:
        new_kwargs["attention_mask"] = mask[:, keep1]
    if n1 != n_full:  # positions re-numbered over the merged sequence (official behaviour)
        base = new_kwargs.get("attention_mask")
        base = torch.ones_like(ids) if base is None else base.long()
        new_kwargs["position_ids"] = (base.cumsum(-1) - 1).clamp_min(0)

    plan = None
    if cfg.stage2:
        plan = Stage2Plan(seq_len=n1, visual_start=first, visual_len=n_vis, query_start=first + n_vis + 1,
                          static_sizes=list(sizes[0]), dynamic_sizes=list(sizes[1]), window_sizes=list(sizes[2]),
                          alpha=cfg.alpha, layer=cfg.selected_layer, scoring=cfg.scoring, reduce=cfg.score_reduce)
        state.pruner.arm(plan)
    try:
        out = parent.forward(self, **new_kwargs)
    finally:
        if plan is not None:
            state.pruner.disarm()
    state.last_plan = plan

    kept_seq = keep1 if plan is None or plan.keep is None else keep1[plan.keep.to(keep1.device)]
    stats["visual_tokens_stage2"] = plan.kept_visual if plan is not None and plan.keep is not None else n_vis
    stats["text_tokens"] = n1 - n_vis
    out_cache = getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)
    if out_cache is not None and getattr(out_cache, "layers", None):
        cache_len = out_cache.get_seq_length()
        stats["kv_visual_tokens"] = out_cache.layers[-1].get_seq_length() - stats["text_tokens"]
        state.decode = {"n_full": n_full, "offset": n_full - n1, "kept": kept_seq, "seen": 0,
                        "cache_len": cache_len, "next_pos": n1}
    state.stats = finish_stats(stats)
    return out


def _remap_decode(kwargs, dec):
    """Inputs of a step after a pruned prefill, given in full-sequence terms -> terms of the pruned cache."""
    ref = kwargs.get("input_ids")
    if ref is None:
        ref = kwargs.get("inputs_embeds")
    q = ref.shape[1]
    kwargs = dict(kwargs)
    pos = kwargs.get("position_ids")
    if pos is not None:
        kwargs["position_ids"] = pos - dec["offset"]
    else:
        kwargs["position_ids"] = (torch.arange(q, device=ref.device) + dec["next_pos"])[None]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        full_len = dec["n_full"] + dec["seen"] + q
        if mask.shape[1] == full_len:
            kept = dec["kept"].to(mask.device)
            kwargs["attention_mask"] = torch.cat([mask[:, kept], mask[:, dec["n_full"]:]], dim=1)
        elif mask.shape[1] != dec["cache_len"] + q:
            raise ValueError(f"attention_mask has length {mask.shape[1]}; expected {full_len} (full sequence) "
                             f"or {dec['cache_len'] + q} (pruned cache) for this decode step")
    dec["seen"] += q
    dec["cache_len"] += q
    dec["next_pos"] += q
    return kwargs
