"""PLLaVA (``PllavaForConditionalGeneration`` from ``pllava_modeling``): the PruneVid paper's main model.

Model-specific facts only; the machinery is ``prunevid.models.video_patch``. Features: CLIP layer -2 without
CLS, projector, 3-D average pooling to ``pooling_shape`` (16 x 12 x 12 = 144 tokens per pooled frame); no
newline; the prompt holds one ``<image>`` placeholder per feature (the official code holds a single
``<image>`` expanded inside the model — the kit expands it in the prompt, as for every model). The official
evaluation conversation (``USER: <image>\\n USER: ... ASSISTANT:``) is ``PLLAVA_CHAT_TEMPLATE``.
"""
from __future__ import annotations

import torch

from .. import state as kit_state
from .video_patch import VideoModelAdapter, method_probe, probe_call, standard_module_functions

ARCHITECTURES = ("PllavaForConditionalGeneration",)
# PruneVid's scripts/eval.sh: K 10 and LoRA alpha 14 for the multiple-choice benchmarks, K 5 and LoRA alpha 4 for VCG.
DEFAULTS = {"frames": 16, "selected_layer": 10, "tokens_per_frame": 144, "protocol": "official", "lora_alpha": 14,
            "benchmarks": {"vcgbench": {"selected_layer": 5, "lora_alpha": 4}}}
# Upstream's load_pllava forces these into the config of every checkpoint it loads.
UPSTREAM_NUM_FRAMES = 16
UPSTREAM_POOLING_SHAPE = (16, 12, 12)
VIDEO_TOKEN = "<image>"
ADD_BOS = True            # Vicuna prompts start with <s>, which the Llama tokenizer adds

# PLLaVA's eval conversations (roles "USER: " / "ASSISTANT:", separators " " and "</s>", the video as its own
# USER turn): system + " " + "USER: <image>\n" + " " + "USER: " + text + " " + "ASSISTANT:" (+ answer prefix).
PLLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}{% set has_video = false %}"
    "{% else %}{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% set has_video = message['content'] | selectattr('type', 'equalto', 'video') | list | length > 0 %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ text + ' ' }}"
    "{% elif message['role'] == 'user' %}{% if has_video %}{{ 'USER: <image>\\n ' }}{% endif %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT:' + text + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class Adapter(VideoModelAdapter):
    placeholder_attr = "image_token_index"
    has_newline = False

    def tokens_per_frame(self, config) -> int:
        return int(config.pooling_shape[1]) * int(config.pooling_shape[2])

    def encode(self, inner, videos, kwargs):
        state = kit_state.find(inner)
        if state is None or not state.impl.needs_vision_attention:
            return inner.get_video_features(videos)
        probe = method_probe(inner.vision_tower, inner.config.vision_feature_layer, state.impl)
        feats, probe = probe_call(inner.get_video_features, probe, videos)
        state.vision = {**probe.record(), "frames": videos.shape[1]}
        return feats

    def vision_attention(self, inner, state, kwargs, frames):
        vision = getattr(state, "vision", None)
        if vision is None:
            raise ValueError(f"method {state.method!r} needs the vision tower's attention: pass pixel_values_videos")
        imp, k = vision["importance"], vision["keys"]
        if inner.config.vision_feature_select_strategy == "default":          # CLS dropped, as the features
            imp, k = imp[:, 1:], k[:, 1:]
        t = vision["frames"]
        side = int(round(imp.shape[1] ** 0.5))
        shape = inner.pooled_shape(t)

        def pool(x):                                                          # (F, P, d) -> (T', h'w', d)
            vol = x.reshape(1, t, side, side, -1).permute(0, 4, 1, 2, 3).float()
            return torch.nn.functional.adaptive_avg_pool3d(vol, shape).flatten(3)[0].permute(1, 2, 0)

        return pool(imp[..., None]).squeeze(-1).to(frames.dtype), pool(k).to(frames.dtype)


ADAPTER = Adapter()
language_layers, tokens_per_frame, _, patch, unpatch = standard_module_functions(ADAPTER)


def num_video_tokens(config, num_frames: int) -> int:
    """Placeholders one video needs: pooled frames x tokens per pooled frame."""
    t = config.pooling_shape[0] if num_frames == config.num_frames else num_frames
    return int(t) * ADAPTER.tokens_per_frame(config)
