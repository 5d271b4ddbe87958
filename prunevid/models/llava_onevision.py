"""``LlavaOnevisionForConditionalGeneration`` (LLaVA-OneVision and LLaVA-Video checkpoints).

Model-specific facts only; the prefill/decode machinery is ``prunevid.models.video_patch``:
video features come from ``get_video_features`` (SigLIP, projector, bilinear 2x pooling: 196 tokens per
384 px frame) followed by one learned ``image_newline``; the prompt holds one ``<video>`` placeholder per
feature; the decoder layers are ``model.model.language_model.layers``. Methods that need the vision tower's
attention get it from the SigLIP layer whose output the projector reads, pooled by the model's own
``apply_pooling``. SigLIP has no CLS token, so the importance is the attention each patch receives (mean over
heads and queries); its feature layer (-1) is the last one, so PruMerge's "layer after the feature layer" is
not there and the feature layer serves (``video_patch.vision_layer_index``).
"""
from __future__ import annotations

import math


from .video_patch import VideoModelAdapter, probing_get_video_features, standard_module_functions

ARCHITECTURES = ("LlavaOnevisionForConditionalGeneration",)
DEFAULTS = {"frames": 32, "selected_layer": 10, "tokens_per_frame": 196, "protocol": "lmms-eval"}
VIDEO_TOKEN = "<video>"


class Adapter(VideoModelAdapter):
    placeholder_attr = "video_token_id"
    has_newline = True

    def tokens_per_frame(self, config) -> int:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return math.ceil(side / 2) ** 2

    def vision_attention(self, inner, state, kwargs, frames):
        vision = getattr(state, "vision", None)
        if vision is None:
            raise ValueError(f"method {state.method!r} needs the vision tower's attention: pass "
                             f"pixel_values_videos (or encode the video with the patched model's get_video_features)")
        imp, k = vision["importance"], vision["keys"]
        strategy = kwargs.get("vision_feature_select_strategy") or inner.config.vision_feature_select_strategy
        if strategy == "default":                                             # a CLS column is dropped
            imp, k = imp[:, 1:], k[:, 1:]
        # pooled to the per-frame grid exactly as the features are (bilinear 2x, the model's own apply_pooling)
        importance = inner.apply_pooling(imp[..., None].to(frames.dtype)).squeeze(-1)   # (F, P)
        keys = inner.apply_pooling(k.to(frames.dtype))                                  # (F, P, d)
        return importance, keys


ADAPTER = Adapter()
language_layers, tokens_per_frame, num_video_tokens, patch, unpatch = standard_module_functions(
    ADAPTER, lambda parent: {"get_video_features": probing_get_video_features(parent)})
