"""PLLaVA (the PruneVid paper's main model) built from transformers parts, loading the released checkpoints.

PLLaVA = CLIP ViT-L/14-336 vision tower (hidden states of layer -2, CLS dropped: 24 x 24 patches per frame),
a LLaVA projector (linear, GELU, linear), a 3-D adaptive average pooling of the (T, 24, 24) feature volume to
``pooling_shape`` (16 x 12 x 12 = 2304 tokens for 16 frames), and a Vicuna/Llama LLM with LoRA on q/v
(r = 128). The LoRA weights are kept apart from the base weights and scaled by ``lora_alpha / r`` at run time,
so one checkpoint serves ``lora_alpha`` 14 (PruneVid's multiple-choice runs) and 4 (VCG, and PLLaVA's own
evaluation) — ``set_lora_alpha``.

Released checkpoints (``ermu2001/pllava-7b`` ...) were saved after PEFT wrapped the LLM and with transformers
4.x's nested CLIP (``vision_model.``); ``load_pllava_state_dict`` maps those names onto this module tree and
fails on any missing key (the official loader's ``strict=False`` silently left weights random).

Module tree (what ``language_layers`` and the PruneVid patch rely on, as for LLaVA-OneVision):
``PllavaForConditionalGeneration.model`` (``PllavaModel``: ``vision_tower``, ``multi_modal_projector``,
``language_model`` = ``LlamaModel``) and ``lm_head``.
"""
from __future__ import annotations

import glob
import inspect
import json
import os
import re
from typing import Optional

import torch
from torch import nn
from transformers import CLIPVisionModel, GenerationMixin, LlamaModel, LlavaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

_TAKES_CACHE = "cache" in inspect.signature(LlamaModel.forward).parameters    # the 5.24 name of past_key_values


class PllavaConfig(LlavaConfig):
    """``LlavaConfig`` plus PLLaVA's fields (the released ``config.json`` says ``model_type: llava``)."""

    pooling_shape: list = (16, 12, 12)
    num_frames: int = 16
    frame_shape: list = (24, 24)
    lora_r: int = 128
    lora_alpha: float = 14.0
    lora_target_modules: list = ("q_proj", "v_proj")


class LoraLinear(nn.Module):
    """``y = base(x) + (lora_alpha / r) * B(A(x))`` with the alpha chosen at run time (no dropout at inference)."""

    def __init__(self, base: nn.Linear, r: int, lora_alpha: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)                     # a fresh adapter is the identity
        self.r = r
        self.scaling = lora_alpha / r

    @property
    def in_features(self):
        return self.base_layer.in_features

    @property
    def out_features(self):
        return self.base_layer.out_features

    @property
    def weight(self):
        return self.base_layer.weight

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class PllavaProjector(nn.Module):
    def __init__(self, config: PllavaConfig):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size, bias=True)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size, bias=True)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class PllavaPreTrainedModel(PreTrainedModel):
    config_class = PllavaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        if isinstance(module, LoraLinear):
            nn.init.zeros_(module.lora_B.weight)


class PllavaModel(PllavaPreTrainedModel):
    def __init__(self, config: PllavaConfig):
        super().__init__(config)
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.multi_modal_projector = PllavaProjector(config)
        self.language_model = LlamaModel(config.text_config)
        add_lora(self.language_model, config.lora_r, config.lora_alpha, tuple(config.lora_target_modules))
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def pooled_shape(self, num_frames: int) -> tuple:
        """(T', h', w') of the pooled volume: PLLaVA pools time only when it was configured for that."""
        t, h, w = self.config.pooling_shape
        return (t if num_frames == self.config.num_frames else num_frames, h, w)

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T' * h' * w', C): CLIP layer -2 without CLS, projector, 3-D average pooling;
        frame-major, raster order inside a frame."""
        b, t = pixel_values_videos.shape[:2]
        out = self.vision_tower(pixel_values_videos.flatten(0, 1), output_hidden_states=True)
        feats = out.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        feats = self.multi_modal_projector(feats)                                   # (B*T, P, C)
        side = int(round(feats.shape[1] ** 0.5))
        vol = feats.view(b, t, side, side, -1).permute(0, 4, 1, 2, 3)               # (B, C, T, h, w)
        vol = nn.functional.adaptive_avg_pool3d(vol, self.pooled_shape(t))
        return vol.flatten(2).transpose(1, 2)                                        # (B, T'h'w', C)

    def forward(self, input_ids=None, pixel_values_videos=None, attention_mask=None, position_ids=None,
                inputs_embeds=None, use_cache=None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        token = self.config.image_token_index
        if inputs_embeds is None:
            # as PLLaVA: placeholders are embedded as the pad token, then overwritten by the video features
            pad = self.config.text_config.pad_token_id or 0
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(input_ids == token, pad))
        if pixel_values_videos is not None:
            if input_ids is None:
                raise ValueError("pixel_values_videos needs input_ids holding the <image> placeholders")
            feats = self.get_video_features(pixel_values_videos).to(inputs_embeds.dtype)
            mask = input_ids == token
            if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
                raise ValueError(f"the prompt holds {int(mask.sum())} <image> placeholders, but the video gives "
                                 f"{feats.shape[0] * feats.shape[1]} features")
            inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], feats.flatten(0, 1))
        if "past_key_values" in kwargs and _TAKES_CACHE:       # transformers >= 5.24 renamed it (old name warns)
            kwargs["cache"] = kwargs.pop("past_key_values")
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, use_cache=use_cache, **kwargs)


class PllavaForConditionalGeneration(PllavaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}

    def __init__(self, config: PllavaConfig):
        super().__init__(config)
        self.model = PllavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm_head

    def set_lora_alpha(self, lora_alpha: float) -> None:
        """Rescale every LoRA adapter (PruneVid: 14 for multiple choice, 4 for VCG)."""
        self.config.lora_alpha = lora_alpha
        for m in self.modules():
            if isinstance(m, LoraLinear):
                m.scaling = lora_alpha / m.r

    def forward(self, input_ids=None, pixel_values_videos=None, attention_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, pixel_values_videos=pixel_values_videos, attention_mask=attention_mask,
                         position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100)
        cache_field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      attentions=out.attentions, **{cache_field: getattr(out, cache_field, None)})


def add_lora(module: nn.Module, r: int, lora_alpha: float, targets: tuple) -> None:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets`` (q_proj, v_proj) with ``LoraLinear``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoraLinear(child, r, lora_alpha))


# ------------------------------------------------------------------------------------------------ loading
_RENAMES = [
    (re.compile(r"^vision_tower\.vision_model\."), "model.vision_tower."),        # transformers 4.x nested CLIP
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
    (re.compile(r"^language_model\.base_model\.model\.model\."), "model.language_model."),   # PEFT-wrapped LLM
    (re.compile(r"^language_model\.base_model\.model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\.model\."), "model.language_model."),           # plain (merged) LLM
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
]


def map_released_key(key: str) -> str:
    """A released PLLaVA state-dict key -> this module tree's key."""
    for pattern, repl in _RENAMES:
        if pattern.search(key):
            key = pattern.sub(repl, key, count=1)
            break
    return key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def checkpoint_files(path: str) -> list:
    """The official rule: ``model.safetensors`` if it exists and no ``model-0*`` shard does, else every
    ``model-0*`` shard (the index JSON and ``model.safetensors-deprecated`` are ignored)."""
    shards = sorted(glob.glob(os.path.join(path, "model-0*.safetensors")))
    single = os.path.join(path, "model.safetensors")
    if shards:
        return shards
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model-0*.safetensors in {path}")


def load_pllava_state_dict(model: PllavaForConditionalGeneration, path: str) -> dict:
    """Load a released checkpoint into ``model``; raise on missing keys, report unexpected ones."""
    from safetensors.torch import load_file
    state = {}
    for f in checkpoint_files(path):
        part = load_file(f)
        if "model" in part and len(part) == 1:
            part = part["model"]
        state.update({map_released_key(k): v for k, v in part.items()})
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} weights, e.g. {missing[:5]}")
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return {"unexpected": unexpected, "loaded": len(own)}


def from_pretrained(path: str, *, lora_alpha: Optional[float] = None, dtype=torch.float32,
                    attn_implementation: str = "sdpa", **config_overrides) -> PllavaForConditionalGeneration:
    """Build PLLaVA from a checkpoint directory (PLLaVA's ``config.json``), load its weights with the key
    mapping above, and set ``lora_alpha`` (default: the config's, 14 if absent)."""
    config = PllavaConfig.from_pretrained(path, **config_overrides)
    if config.text_config.pad_token_id is None and config.pad_token_id is None:
        raise ValueError(f"{path}/config.json sets no pad_token_id (PLLaVA embeds its placeholders as pad)")
    if config.text_config.pad_token_id is None:
        config.text_config.pad_token_id = config.pad_token_id
    config._attn_implementation = attn_implementation
    model = PllavaForConditionalGeneration(config)
    load_pllava_state_dict(model, path)
    if lora_alpha is not None:
        model.set_lora_alpha(lora_alpha)
    return model.to(dtype).eval()
