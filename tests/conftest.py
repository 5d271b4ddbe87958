import pytest
import torch

from prunevid.models.llava_onevision import num_video_tokens
from prunevid.models.tiny import build_tiny_llava_onevision

QUESTION = "Question: What moves?\nOptions:\n(A) the car\n(B) the tree\nOnly give the best option."


def make_inputs(model, tok, frames=8, seed=0, size=None, question=QUESTION, batch=1):
    """Prompt with the full number of <video> placeholders and a video whose frames share a background
    (so stage 1 finds static locations) with a moving bright square (dynamic locations)."""
    size = size or model.config.vision_config.image_size
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(3, size, size, generator=g)
    video = background.repeat(frames, 1, 1, 1).clone()
    for t in range(frames):
        x = (t * size // frames) % (size - 24)
        video[t, :, 20:44, x:x + 24] = 3.0
    video = video + 0.05 * torch.randn(video.shape, generator=g)
    n = num_video_tokens(model.config, frames)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False) + "Best option:("
    prompt = prompt.replace("<video>", "<video>" * n)
    enc = tok([prompt] * batch, return_tensors="pt", add_special_tokens=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "pixel_values_videos": video[None].repeat(batch, 1, 1, 1, 1)}


@pytest.fixture(scope="session")
def tiny():
    model, tok = build_tiny_llava_onevision()
    return model, tok


@pytest.fixture(scope="session")
def tiny_eager():
    model, tok = build_tiny_llava_onevision(attn_implementation="eager")
    return model, tok


# Fixtures of the method tests (baselines issue)
FRAMES = 8


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


def apply_with_hints(model, method, hints=None, **params):
    """``prunevid.apply`` plus those of ``hints`` (name -> value) the method reads (``Method.needs_hints``)."""
    import prunevid
    prunevid.apply(model, method=method, **params)
    wanted = {k: v for k, v in (hints or {}).items() if k in prunevid.state.active_method(model).needs_hints}
    if wanted:
        prunevid.state.set_hints(model, **wanted)


def run_patched(model, inputs, method, hints=None, **params):
    """(logits, stats, info) of one forward of ``model`` patched with ``method`` at ``params`` (and the ``hints``
    it reads); unpatched after."""
    import prunevid
    apply_with_hints(model, method, hints, **params)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
        return logits, prunevid.stats(model), prunevid.patch.info(model)
    finally:
        prunevid.remove(model)
