"""The token sequences the demo model trains on: the official evaluation prompt, multi-turn training sequences and
their loss weights, padding, pixels, and the answer classes every answer position is labelled with."""
from __future__ import annotations

import torch

from ... import synthetic as S
from ...video import preprocess_frames
from .. import demo_model as D


TOKENS_PER_FRAME = 49
N_VIDEO = S.NUM_FRAMES * TOKENS_PER_FRAME + 1
CAPTION_REQUEST = "Describe the video."


class Encoder:
    """Token ids and loss masks for the official prompt and for multi-turn training sequences."""

    def __init__(self, tok):
        self.tok = tok
        self.video_id = tok.convert_tokens_to_ids("<video>")
        self.letter_ids = [tok.convert_tokens_to_ids(c) for c in S.OPTION_LETTERS[:5]]
        self._cache = {}

    def ids(self, text: str) -> list:
        if text not in self._cache:
            if len(self._cache) > 50000:
                self._cache.clear()
            self._cache[text] = self.tok(text, add_special_tokens=False).input_ids
        return self._cache[text]

    def first_turn(self, question: str, candidates: list, n_video: int = N_VIDEO) -> list:
        """The evaluation prompt (system, user with video and question block, ``Best option:(``)."""
        ids = self.ids(D.render_prompt(self.tok, question, candidates, num_video_tokens=1))
        i = ids.index(self.video_id)
        return ids[:i] + [self.video_id] * n_video + ids[i + 1:]

    def answer(self, q: dict) -> list:
        letter = S.OPTION_LETTERS[q["candidates"].index(q["answer"])]
        return self.ids(f"{letter}) {q['answer']}<|im_end|>")

    def training_sequence(self, questions: list, caption: str = "", caption_weight: float = 0.5,
                          n_video: int = N_VIDEO, marks: list = None, letter_weight: float = 1.0):
        """(ids, weights): the first question in the evaluation format, then one turn per further question and
        an optional caption turn; weights are 1 on answer tokens, ``caption_weight`` on caption tokens, 0
        elsewhere (the weight at position i belongs to predicting token i)."""
        nl = self.ids("\n")
        ids = list(self.first_turn(questions[0]["question"], questions[0]["candidates"], n_video))
        w = [0.0] * len(ids)
        for k, q in enumerate(questions):
            if k > 0:
                p = self.ids("<|im_start|>user\n" + S.synthetic_question(q["question"], q["candidates"]) +
                             "<|im_end|>\n<|im_start|>assistant\n" + S.SYNTHETIC_ANSWER_PREFIX)
                ids += p
                w += [0.0] * len(p)
            a = self.answer(q)
            if marks is not None:          # (position predicting the letter, answer class) for the answer head
                marks.append((len(ids) - 1, ANSWER_CLASSES.index(q["answer"])))
            ids += a + nl
            w += [letter_weight] + [1.0] * (len(a) - 1) + [0.0] * len(nl)
        if caption:
            p = self.ids(f"<|im_start|>user\n{CAPTION_REQUEST}<|im_end|>\n<|im_start|>assistant\n")
            c = self.ids(caption + "<|im_end|>")
            ids += p + c + nl
            w += [0.0] * len(p) + [caption_weight] * len(c) + [0.0] * len(nl)
        return ids, w


def pad_batch(seqs, pad_id):
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def pixels(frames_list) -> torch.Tensor:
    """Frames (T, H, W, 3) uint8 arrays -> (B, T, 3, S, S) float, the kit's preprocessing (mean/std 0.5)."""
    return torch.stack([preprocess_frames(torch.from_numpy(f), S.FRAME_SIZE) for f in frames_list])


LOOKUP_POOLS = (S.COLOR_NAMES, S.DIRECTIONS, S.NUMBERS, S.YES_NO,
                tuple(f"From {a} to {b}" for a in S.SCENE_NAMES for b in S.SCENE_NAMES if a != b))


# Every answer string of the benchmark (and of the look-up sequences): the classes of the answer head.
ANSWER_CLASSES = tuple(dict.fromkeys(a for pool in LOOKUP_POOLS for a in pool))
