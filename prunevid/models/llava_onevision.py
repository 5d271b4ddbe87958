"""Token reduction on ``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision and LLaVA-Video checkpoints).

What is model-specific lives here: where the video features come from (``get_video_features``: SigLIP,
projector, bilinear 2x pooling, one ``image_newline`` appended after all frames), how the prompt marks
them (one ``<video>`` placeholder per feature), and which modules are the decoder layers. The token rules
are the methods' (``prunevid.methods``, interface in ``prunevid.methods.base``); the shared in-LLM
mechanics are in ``prunevid.llm`` (``LayerPruner``: in-LLM plans, cache surgery, cache policies).

The patched inner model is called exactly like the original: ``input_ids`` hold the full number of
``<video>`` placeholders. At the prefill that carries ``pixel_values_videos``, for the active method it
  1. computes the frame features (F, P, C) and the newline — and, when the method sets
     ``needs_vision_attention``, the SigLIP importance / keys pooled to the same grid (``_VisionProbe``);
  2. asks ``method.reduce`` for the tokens entering the LLM and shortens the sequence: the first N1
     placeholders receive them, the last one the newline (never merged or pruned; counted as text), the
     surplus placeholders are dropped; positions are re-numbered 0..N1-1 over the shortened sequence, as the
     official PruneVid / LLaVA code does;
  3. asks ``method.plan`` for an in-LLM plan and ``method.cache_policy`` for a KV-cache policy, hands both to
     the ``LayerPruner`` and runs the language model.
Decode steps get their inputs remapped: positions shift by the number of tokens the pre-LLM reduction
removed (so the first new token sits at the shortened prefill length, as in the official code), and a
full-length 2-D attention mask is reduced to the kept columns. A method whose settings are a no-op
(``enabled`` False) runs the unpatched forward.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

from ..llm import get_cache
from ..methods.base import Reduction, SequenceLayout, VideoContext
from ..patch import finish_stats, empty_stats
from ..prune import attention_column_sums

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

    @functools.wraps(parent.get_video_features)   # generate() reads this signature to pick its arguments
    def get_video_features(self, pixel_values_videos, *args, **kwargs):
        # transformers >= 5.24's generate() encodes the video *before* the prefill (``mm_encoder_outputs``) by
        # calling this method; a method that needs the vision attention gets it here, for this call only.
        state = self.__dict__.get("_prunevid")
        if state is None or not state.impl.enabled or not state.impl.needs_vision_attention:
            return parent.get_video_features(self, pixel_values_videos, *args, **kwargs)
        layer = kwargs.get("vision_feature_layer", args[0] if args else None)
        if layer is None:
            layer = self.config.vision_feature_layer
        probe = _VisionProbe(_vision_layer(self, layer).self_attn)
        try:
            out = parent.get_video_features(self, pixel_values_videos, *args, **kwargs)
        finally:
            probe.remove()
        state.vision = {"features": out.pooler_output, "importance": probe.importance, "keys": probe.keys}
        return out

    cls = type(f"PruneVid{parent.__name__}", (parent,), {"forward": forward, "get_video_features": get_video_features,
                                                          "_prunevid_parent": parent})
    _CLASS_CACHE[parent] = cls
    return cls


# ----------------------------------------------------------------------------------------------------------
def _forward(self, parent, kwargs):
    state = self._prunevid
    method = state.impl
    videos = kwargs.get("pixel_values_videos")
    encoded = _encoded_video(kwargs)
    input_ids = kwargs.get("input_ids")
    cache = get_cache(kwargs)
    past = cache.get_seq_length() if cache is not None else 0

    if videos is not None or encoded is not None:
        state.decode = None
        state.pruner.set_policy(None)
        state.info = {}
        if not method.enabled:
            state.stats = _unpruned_stats(self, input_ids, _num_frames(self, videos, encoded))
            return parent.forward(self, **kwargs)
        return _pruned_prefill(self, parent, state, kwargs)

    dec = state.decode
    if dec is not None and past > 0 and past == dec["cache_len"]:
        kwargs = _remap_decode(kwargs, dec)
    elif past == 0:
        state.decode = None
        state.pruner.set_policy(None)
    return parent.forward(self, **kwargs)


def _encoded_video(kwargs):
    """The pre-encoded video (``mm_encoder_outputs["video"]``, what generate() passes in transformers >= 5.24)."""
    mm = kwargs.get("mm_encoder_outputs")
    if not mm:
        return None
    return mm.get("video") if isinstance(mm, dict) else None


def _num_frames(self, videos, encoded) -> int:
    if videos is not None:
        return int(videos.shape[1])
    n = encoded.pooler_output.shape[-2] - 1
    per_frame = tokens_per_frame(self.config)
    if n % per_frame:
        raise ValueError(f"pre-encoded video features hold {n + 1} tokens, not frames x {per_frame} + 1 newline")
    return n // per_frame


def _unpruned_stats(self, input_ids, n_frames) -> dict:
    stats = empty_stats()
    if input_ids is not None and input_ids.shape[0] == 1:
        n_vis = n_frames * tokens_per_frame(self.config)
        stats.update(visual_tokens_in=n_vis, visual_tokens_stage1=n_vis, visual_tokens_stage2=n_vis,
                     kv_visual_tokens=n_vis, text_tokens=input_ids.shape[1] - n_vis)
    return finish_stats(stats)


class _VisionProbe:
    """Forward pre-hook on the SigLIP attention of the layer whose output the projector reads, for this
    instance and this call only. From that layer's own q/k (SDPA keeps running; nothing is eager) it
    computes, per frame, the attention each patch receives averaged over heads and queries (block-wise
    column sums) and the keys averaged over heads. The kit's adaptation for CLS-less SigLIP (the rule of
    HoliTom's VisionZip port): PruMerge/VisionZip use CLS attention on CLIP."""

    def __init__(self, attn, block: int = 256):
        self.attn, self.block = attn, block
        self.importance = self.keys = None
        self.handle = attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]               # (frames, Np, D), layer-normed
        n_frames, n_patches, _ = h.shape
        heads = module.num_heads
        with torch.no_grad():
            imp, keys = [], []
            for f in range(n_frames):
                q = module.q_proj(h[f]).view(n_patches, heads, -1).transpose(0, 1)     # (H, Np, d)
                k = module.k_proj(h[f]).view(n_patches, heads, -1).transpose(0, 1)
                sums = attention_column_sums(q, k, scaling=module.scale, block=self.block)  # (H, Np)
                imp.append(sums.sum(0) / (heads * n_patches))
                keys.append(k.mean(0))
            self.importance = torch.stack(imp)                           # (F, Np) float32
            self.keys = torch.stack(keys)                                # (F, Np, d)
        return None

    def remove(self):
        self.handle.remove()


def _vision_layer(self, feature_layer):
    """The SigLIP encoder layer whose output ``hidden_states[feature_layer]`` is."""
    tower = self.vision_tower
    tower = getattr(tower, "vision_model", tower)                  # SiglipVisionModel wraps or is the transformer
    layers = tower.encoder.layers
    if not isinstance(feature_layer, int):
        raise NotImplementedError("vision attention for several vision_feature_layers is not supported")
    return layers[feature_layer] if feature_layer < 0 else layers[feature_layer - 1]


def _video_features(self, state, kwargs, videos, encoded, n_frames):
    """(frames (F, P, C), newline (1, C), importance (F, P) or None, keys (F, P, Dk) or None)."""
    per_frame = tokens_per_frame(self.config)
    if encoded is None:
        state.vision = None
        encoded = self.get_video_features(        # the patched method: runs the vision probe when needed
            videos, vision_feature_layer=kwargs.get("vision_feature_layer"),
            vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"), return_dict=True)
    feats = encoded.pooler_output
    feats = feats[0] if not isinstance(feats, torch.Tensor) or feats.dim() == 3 else feats   # (F*P + 1, C)
    frames = feats[:-1].reshape(n_frames, per_frame, -1)                      # (F, P, C)
    newline = feats[-1:]
    importance = keys = None
    if state.impl.needs_vision_attention:
        vision = getattr(state, "vision", None)
        if vision is None or vision["features"] is not encoded.pooler_output:
            raise ValueError(f"method {state.method!r} needs the vision tower's attention: pass "
                             f"pixel_values_videos (or encode the video with the patched model's get_video_features)")
        imp, k = vision["importance"], vision["keys"]
        strategy = kwargs.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        if strategy == "default":                                             # a CLS column is dropped
            imp, k = imp[:, 1:], k[:, 1:]
        # pooled to the per-frame grid exactly as the features are (bilinear 2x, the model's own apply_pooling)
        importance = self.apply_pooling(imp[..., None].to(frames.dtype)).squeeze(-1)   # (F, P)
        keys = self.apply_pooling(k.to(frames.dtype))                                  # (F, P, d)
    return frames, newline, importance, keys


def _pruned_prefill(self, parent, state, kwargs):
    method = state.impl
    input_ids = kwargs.get("input_ids")
    videos = kwargs.get("pixel_values_videos")
    encoded = _encoded_video(kwargs)
    batch = videos.shape[0] if videos is not None else encoded.pooler_output.shape[0]
    if input_ids is None:
        raise ValueError("the PruneVid patch needs input_ids (with the <video> placeholders), not inputs_embeds")
    if input_ids.shape[0] != 1 or batch != 1:
        raise ValueError(f"the PruneVid patch supports batch size 1 (one video per call), got input_ids of "
                         f"shape {tuple(input_ids.shape)} and a video batch of {batch}")
    mm = kwargs.get("mm_encoder_outputs") or {}
    if kwargs.get("pixel_values") is not None or (isinstance(mm, dict) and mm.get("image") is not None):
        raise ValueError("the PruneVid patch does not support images and a video in the same prompt")

    n_frames = _num_frames(self, videos, encoded)
    per_frame = tokens_per_frame(self.config)
    placeholders = (input_ids[0] == self.config.video_token_id).nonzero().squeeze(1)
    expected = n_frames * per_frame + 1
    if placeholders.numel() != expected:
        raise ValueError(f"the prompt holds {placeholders.numel()} <video> placeholders, but the video gives "
                         f"{expected} features ({n_frames} frames x {per_frame} tokens + 1 image-newline)")
    if int(placeholders[-1] - placeholders[0]) + 1 != expected:
        raise ValueError("the <video> placeholders of the prompt must be contiguous")

    frames, newline, importance, keys = _video_features(self, state, kwargs, videos, encoded, n_frames)
    side = int(round(math.sqrt(per_frame)))
    video = VideoContext(frames=frames, grid=(side, per_frame // side), generator=state.generator(),
                         importance=importance, keys=keys)

    stats = empty_stats()
    stats.update(visual_tokens_in=n_frames * per_frame)
    red = method.reduce(video)
    if red is None:  # frames enter unchanged: every frame is one dynamic group of one segment
        red = Reduction(tokens=frames.reshape(-1, frames.shape[-1]), static_sizes=[0],
                        dynamic_sizes=[n_frames * per_frame], window_sizes=[n_frames])
    visual = red.tokens
    state.last_reduction = red
    state.last_merge = red.info.get("merge")
    n_vis = visual.shape[0]
    stats["visual_tokens_stage1"] = n_vis
    if "merge" in red.info:  # PruneVid's stage-1 structure
        stats.update(segments=list(red.window_sizes), static_tokens=list(red.static_sizes),
                     dynamic_tokens=list(red.dynamic_sizes))

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
    new_kwargs = dict(kwargs, input_ids=None, inputs_embeds=embeds, pixel_values_videos=None)
    new_kwargs.pop("mm_encoder_outputs", None)
    if mask is not None:
        new_kwargs["attention_mask"] = mask[:, keep1]
    if n1 != n_full:  # positions re-numbered over the shortened sequence (official PruneVid / LLaVA behaviour)
        base = new_kwargs.get("attention_mask")
        base = torch.ones_like(ids) if base is None else base.long()
        new_kwargs["position_ids"] = (base.cumsum(-1) - 1).clamp_min(0)

    layout = SequenceLayout(seq_len=n1, visual_start=first, visual_len=n_vis, query_start=first + n_vis + 1,
                            num_layers=len(state.pruner.layers), num_frames=n_frames,
                            visual_tokens_in=n_frames * per_frame, reduction=red)
    plan = method.plan(layout)
    policy = method.cache_policy(layout)
    if plan is not None:
        state.pruner.arm(plan)
    if policy is not None:
        policy.phase = "prefill"
    state.pruner.set_policy(policy)
    try:
        out = parent.forward(self, **new_kwargs)
    finally:
        if plan is not None:
            state.pruner.disarm()
        if policy is not None:
            policy.phase = "decode"
    state.last_plan = plan

    kept_seq = keep1 if plan is None or plan.keep is None else keep1[plan.keep.to(keep1.device)]
    if policy is not None and policy.kept_positions() is not None:
        kept_seq = keep1[policy.kept_positions().to(keep1.device)]
    stats["visual_tokens_stage2"] = plan.kept_visual if plan is not None and plan.keep is not None else n_vis
    stats["text_tokens"] = n1 - n_vis
    out_cache = getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)
    if out_cache is not None and getattr(out_cache, "layers", None):
        cache_len = out_cache.get_seq_length()
        stats["kv_visual_tokens"] = out_cache.layers[-1].get_seq_length() - stats["text_tokens"]
        state.decode = {"n_full": n_full, "offset": n_full - n1, "kept": kept_seq, "seen": 0,
                        "cache_len": cache_len, "next_pos": n1}
    else:
        state.pruner.set_policy(None)
    state.stats = finish_stats(stats)
    state.info = dict(red.info)
    state.info.pop("merge", None)
    if policy is not None and policy.info is not None:
        state.info.update(policy.info)                     # the policy keeps updating it during decoding
        policy.info = state.info
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
