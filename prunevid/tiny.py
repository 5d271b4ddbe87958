"""Moved to ``prunevid.models.tiny``; this re-export is kept for one release."""
from .models.tiny import *  # noqa: F401,F403
from .models.tiny import (LLAVA_ONEVISION_CHAT_TEMPLATE, QWEN2_VL_CHAT_TEMPLATE, SPECIAL_TOKENS,  # noqa: F401
                          TINY_MODELS, build_byte_tokenizer, build_tiny_llava_next_video, build_tiny_llava_onevision,
                          build_tiny_pllava, build_tiny_qwen2_vl, tiny_llava_onevision_config)
