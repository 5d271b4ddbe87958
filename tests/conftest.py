import pytest
import torch

from prunevid.models.llava_onevision import num_video_tokens
from prunevid.tiny import build_tiny_llava_onevision

FRAMES = 8


@pytest.fixture(scope="session")
def tiny():
    torch.set_num_threads(2)
    return build_tiny_llava_onevision()


@pytest.fixture(scope="session")
def tiny_inputs(tiny):
    model, tok = tiny
    n = num_video_tokens(model.config, FRAMES)
    prompt = ("<|im_start|>user\n" + "<video>" * n + "\nWhat happens in the video?<|im_end|>\n"
              "<|im_start|>assistant\n")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 3, 112, 112, generator=gen)
    # temporally coherent frames (a static background plus motion), like a real clip
    frames = base.repeat(1, FRAMES, 1, 1, 1) + 0.3 * torch.randn(1, FRAMES, 3, 112, 112, generator=gen)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "pixel_values_videos": frames}


@pytest.fixture(scope="session")
def tiny_ref(tiny, tiny_inputs):
    model, _ = tiny
    with torch.no_grad():
        return model(**tiny_inputs).logits
