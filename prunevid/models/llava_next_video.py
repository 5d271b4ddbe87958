"""``LlavaNextVideoForConditionalGeneration`` (LLaVA-NeXT-Video).

Model-specific facts only; the machinery is ``prunevid.models.video_patch``. Features: CLIP layer -2 without
CLS, ``vision_resampler`` (2x2 pooling: 144 tokens per 336 px frame), projector; no newline; one ``<video>``
placeholder per feature. The vision attention for VisionZip/PruMerge (CLIP has a CLS token: the CLS rules of
``video_patch.VisionAttentionProbe``; PruMerge reads the last layer, after the feature layer -2) is pooled with
the same stride (average).
"""
from __future__ import annotations


import torch

from .video_patch import VideoModelAdapter, probing_get_video_features, standard_module_functions

ARCHITECTURES = ("LlavaNextVideoForConditionalGeneration",)
DEFAULTS = {"frames": 32, "selected_layer": 10, "tokens_per_frame": 144, "protocol": "lmms-eval"}
VIDEO_TOKEN = "<video>"


class Adapter(VideoModelAdapter):
    placeholder_attr = "video_token_id"
    has_newline = False

    def tokens_per_frame(self, config) -> int:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return (side // config.spatial_pool_stride) ** 2

    def vision_attention(self, inner, state, kwargs, frames):
        vision = getattr(state, "vision", None)
        if vision is None:
            raise ValueError(f"method {state.method!r} needs the vision tower's attention: pass pixel_values_videos")
        imp, k = vision["importance"], vision["keys"]
        strategy = kwargs.get("vision_feature_select_strategy") or inner.config.vision_feature_select_strategy
        if strategy == "default":
            imp, k = imp[:, 1:], k[:, 1:]
        stride = inner.config.spatial_pool_stride
        side = int(round(imp.shape[1] ** 0.5))

        def pool(x):                                                          # (F, P, d) -> (F, P', d)
            grid = x.reshape(x.shape[0], side, side, -1).permute(0, 3, 1, 2).float()
            return torch.nn.functional.avg_pool2d(grid, stride, stride).flatten(2).transpose(1, 2)

        return pool(imp[..., None]).squeeze(-1).to(frames.dtype), pool(k).to(frames.dtype)


ADAPTER = Adapter()
language_layers, tokens_per_frame, num_video_tokens, patch, unpatch = standard_module_functions(
    ADAPTER, lambda parent: {"get_video_features": probing_get_video_features(parent)})
