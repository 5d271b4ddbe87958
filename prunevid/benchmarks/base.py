"""What every benchmark definition provides, and the pieces the multiple-choice ones share.

A benchmark definition answers five questions for the runner (lmms-eval's vocabulary, as a small class):
which items exist (``items``), which frames to feed (``frames``), which prompt to render (``prompt``), how
many tokens to generate (``gen_kwargs``) and how a prediction is scored (``score`` per item, ``aggregate``
over the run). Two protocols exist (``PROTOCOLS``): ``official`` (PruneVid/PLLaVA evaluation code) and
``lmms-eval`` (the harness behind every published LLaVA-OneVision number).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

PROTOCOLS = ("official", "lmms-eval")
LETTERS = "ABCDEFGHIJ"

# Frames and sampling per protocol (prunevid-method.md §5.2; external-formats.md §7.2).
PROTOCOL_FRAMES = {"official": 16, "lmms-eval": 32}
PROTOCOL_SAMPLING = {"official": "middle", "lmms-eval": "linspace"}

LMMS_SYSTEM = "You are a helpful assistant."   # qwen_1_5 conversation of lmms-eval's llava_onevision


@dataclass(frozen=True)
class ProtocolOptions:
    """Where the kit may depart from the official evaluation code. Every default is upstream's behaviour
    (PruneVid ``tasks/eval/``); each other value is a named kit fix, listed in ``docs/fidelity.md``.

    - ``answer_parse``: ``"official"`` — the text after the last ``ASSISTANT:`` of the decoded prompt+output,
      then everything after the first ``Best option:(`` joined (``''.join(s.split(prefix)[1:])``);
      ``"last_prefix"`` — the kit's rule: only the text after the last ``Best option:(`` of the answer.
    - ``stop_rule`` (VCG): ``"official"`` — ``KeywordsStoppingCriteria(["###", "USER"])``, which stops only when
      BOTH strings are in the generated text (and EOS); ``"eos"`` — EOS only.
    - ``judge_parse`` (VCG): ``"strict"`` — the judge reply read with ``ast.literal_eval`` only, a failure is
      retried and then scores 0; ``"tolerant"`` — a ``score: N`` regex as fallback (counted in
      ``counts.fallback_parsed``).
    - ``consistency_labels`` (VCG): ``"official"`` — upstream swaps the questions before storing the record,
      so the judge reads "Question 1" = Q2 and "Question 2" = Q1 beside the answers to Q1 and Q2;
      ``"matched"`` — each question beside its own answer.
    - ``short_clips``: ``"duplicate"`` — a clip with fewer frames than asked is sampled with repeated indices,
      as upstream's ``get_index`` does (a warning; counted in ``counts.short_clips``); ``"error"`` — the kit's
      old rule: an error row, scored wrong.
    - ``video``: ``"as_is"`` — the item's frames; ``"black"`` — every frame replaced by black pixels after decoding
      (same count and size): the video-blind control, not a departure from upstream. A model that answers from
      the video falls to chance under it; one that scores above chance reads the answer from the text.
    """

    answer_parse: str = "official"
    stop_rule: str = "official"
    judge_parse: str = "strict"
    consistency_labels: str = "official"
    short_clips: str = "duplicate"
    video: str = "as_is"

    CHOICES = {"answer_parse": ("official", "last_prefix"), "stop_rule": ("official", "eos"),
               "judge_parse": ("strict", "tolerant"), "consistency_labels": ("official", "matched"),
               "short_clips": ("duplicate", "error"), "video": ("as_is", "black")}

    def __post_init__(self):
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"protocol option {name}={getattr(self, name)!r}: use one of {list(allowed)}")

    @classmethod
    def from_dict(cls, options: Optional[dict]) -> "ProtocolOptions":
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.CHOICES))
        if unknown:
            raise ValueError(f"unknown protocol option(s) {unknown}; known: {sorted(cls.CHOICES)}")
        return cls(**{k: str(v) for k, v in options.items()})

    def to_dict(self) -> dict:
        """Every option, except ``video`` at ``"as_is"``: the control appears in a run's record only when used, so
        folders written before it existed keep their identity (``runner.IDENTITY_KEYS``) and resume."""
        return {name: getattr(self, name) for name in self.CHOICES if not (name == "video" and self.video == "as_is")}


class DataMissing(FileNotFoundError):
    """Benchmark data is not where the official layout puts it; the message names the data script to run."""


@dataclass
class Item:
    """One question of a benchmark, with absolute media path(s)."""

    id: str
    category: str
    video: str
    question: str
    candidates: Optional[List[str]] = None
    answer: Optional[str] = None                 # MC: the correct candidate's text; VCG: the reference answer
    bound: Optional[Tuple[float, float]] = None  # (start, end) seconds, MVBench bounded tasks
    frame_folder: bool = False                   # MVBench episodic reasoning: a folder of 00001.jpg ...
    extra: Dict = field(default_factory=dict)    # fields kept for per-category scores / submission files

    @property
    def letters(self) -> str:
        return LETTERS[:len(self.candidates or [])]

    @property
    def answer_letter(self) -> Optional[str]:
        if self.answer is None or not self.candidates or self.answer not in self.candidates:
            return None
        return LETTERS[self.candidates.index(self.answer)]


@dataclass
class Prompt:
    """What goes through the model's chat template: a system turn (or None), the user text after the video,
    and the text appended after the generation prompt (the official ``Best option:(``)."""

    system: Optional[str]
    text: str
    answer_prefix: str = ""


@dataclass
class Score:
    parsed: Optional[str]       # the option letter read from the prediction (None when unparsed)
    correct: Optional[bool]     # None when the item has no public answer (EgoSchema full set) or is free-form
    unparsed: bool = False
    fallback: bool = False      # parsed only by a kit fix (a ProtocolOptions value other than upstream's)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {list(PROTOCOLS)}")
    return protocol


# ---------------------------------------------------------------------------------------------------------
# Official (PruneVid / PLLaVA / VideoChat2) multiple choice: question block, post prompt, answer prefix.
# ``tasks/eval/eval_utils.py``: ``Conversation.user_query`` joins the question and the post prompt with a space
# (``f"{query} {post_query_prompt}"``), so the user text ends in ``"... (B) b \nOnly give the best option."``.
OFFICIAL_POST_PROMPT = "\nOnly give the best option."
OFFICIAL_ANSWER_PREFIX = "Best option:("
OFFICIAL_ASSISTANT_TAG = "ASSISTANT:"     # PLLaVA's roles[-1]: ``pllava_answer`` splits the decoded text on it


def official_question_block(question: str, candidates: Sequence[str]) -> str:
    """``qa_template``: ``Question: {q}\\nOptions:\\n(A) c0\\n(B) c1...``, right-stripped."""
    text = f"Question: {question}\nOptions:\n"
    for letter, cand in zip(LETTERS, candidates):
        text += f"({letter}) {cand}\n"
    return text.rstrip()


def official_user_query(query: str, post_query_prompt: Optional[str] = OFFICIAL_POST_PROMPT) -> str:
    """``Conversation.user_query``: the post prompt joined to the query with one space."""
    return query if post_query_prompt is None else f"{query} {post_query_prompt}"


def official_mc_prompt(system: str, item: Item) -> Prompt:
    return Prompt(system=system, text=official_user_query(official_question_block(item.question, item.candidates)),
                  answer_prefix=OFFICIAL_ANSWER_PREFIX)


def official_answer_text(prediction: str, prompt_tail: str = "", split_tag: str = OFFICIAL_ASSISTANT_TAG) -> str:
    """``pllava_answer``: the decoded prompt+output split on the last ``split_tag``, ``</s>`` suffix removed,
    stripped. ``prediction`` is the generated text only; ``prompt_tail`` the text the prompt ends with after its
    last ``split_tag`` (``Best option:(`` for the multiple-choice benchmarks, nothing for VCG)."""
    return (prompt_tail + prediction).split(split_tag)[-1].removesuffix("</s>").strip()


def official_pred(prediction: str, answer_prefix: str = OFFICIAL_ANSWER_PREFIX, rule: str = "official"
                  ) -> Tuple[str, str]:
    """(pred, after): the string the official ``check_ans`` receives, ``"(" + after``, and ``after``.

    ``rule="official"`` (``infer_mvbench``): the assistant text (``official_answer_text``: the text after the last
    ``ASSISTANT:``, so an ``ASSISTANT:`` in the output discards the answer prefix), then
    ``''.join(text.split(answer_prefix)[1:])`` — every piece after the FIRST prefix, joined with the prefix
    removed. ``rule="last_prefix"`` (the kit's fix): the text after the LAST prefix of ``answer_prefix +
    prediction``, right-stripped. ``prediction`` is the generated text only; the prefix ends the prompt.
    """
    if rule == "official":
        text = official_answer_text(prediction, answer_prefix)
        after = "".join(text.split(answer_prefix)[1:])
    elif rule == "last_prefix":
        after = (answer_prefix + prediction).split(answer_prefix)[-1].rstrip()
    else:
        raise ValueError(f"answer_parse must be 'official' or 'last_prefix', got {rule!r}")
    return "(" + after, after


def check_ans(pred: str, gt: str) -> bool:
    """MVBench's ``check_ans``: lower-case, split on single spaces, compare the leading option tokens.

    Correct when the first token of ``pred`` holds a letter a-g and either ``pred_tok.replace('.', '')`` is a
    substring of ``gt_tok`` or ``gt_tok`` is a substring of ``pred_tok``; ``gt`` is ``"(B) answer text"``.
    """
    pred_tok = pred.lower().split(" ")[0]
    gt_tok = gt.lower().split(" ")[0]
    if not any(c in pred_tok for c in "abcdefg"):
        return False
    return pred_tok.replace(".", "") in gt_tok or gt_tok in pred_tok


def _official_letter(after: str, letters: str) -> Optional[str]:
    first = after[:1].upper()
    return first if first and first in letters else None


def official_mc_score(item: Item, prediction: str, rule: str = "official") -> Score:
    """``check_ans`` on the official parse. ``parsed`` is the option letter the answer starts with (None:
    unparsed). Under ``rule="last_prefix"``, an item that the official rule leaves unparsed and the kit's rule
    parses is marked ``fallback``."""
    pred, after = official_pred(prediction, rule=rule)
    letter = _official_letter(after, item.letters)
    fallback = False
    if rule != "official" and letter is not None:
        fallback = _official_letter(official_pred(prediction, rule="official")[1], item.letters) is None
    gt_letter = item.answer_letter
    if gt_letter is None:
        return Score(parsed=letter, correct=None, unparsed=letter is None, fallback=fallback)
    correct = check_ans(pred, f"({gt_letter}) {item.answer}")
    return Score(parsed=letter, correct=bool(correct) and letter is not None, unparsed=letter is None,
                 fallback=fallback)


# ---------------------------------------------------------------------------------------------------------
# lmms-eval answer extraction (no random fallback: what does not parse is unparsed and wrong).
_LMMS_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                  "The correct option is", "Best answer:", "Best option:", "Answer:", "Option:")


def lmms_extract_letter(text: str, letters: str) -> Optional[str]:
    """The option letter of a free-text reply, lmms-eval style: known answer prefixes stripped, then a
    leading letter (``B``, ``(B)``, ``B.``, ``B)``), else a lone capital option letter in a short reply."""
    s = text.strip()
    for prefix in _LMMS_PREFIXES:
        s = s.replace(prefix, "")
    s = s.strip()
    m = re.match(r"^\(?([A-J])(?:[\).:,\s]|$)", s)
    if m and m.group(1) in letters:
        return m.group(1)
    if len(s.split()) > 10:
        return None
    found = [t for t in re.findall(r"\b([A-J])\b", s) if t in letters]
    return found[0] if found else None


def lmms_mc_score(item: Item, prediction: str) -> Score:
    letter = lmms_extract_letter(prediction, item.letters)
    gt = item.answer_letter
    if gt is None:
        return Score(parsed=letter, correct=None, unparsed=letter is None)
    return Score(parsed=letter, correct=letter == gt, unparsed=letter is None)


# ---------------------------------------------------------------------------------------------------------
class Benchmark:
    """Base class. Subclasses set ``name``, ``folder`` (under the data root), ``data_script`` and implement
    ``list_items`` and ``prompt``; multiple-choice ones reuse ``score``/``aggregate`` as they are."""

    name: str = ""
    folder: str = ""
    data_script: str = ""
    multiple_choice: bool = True
    secondary_categories: Tuple[str, ...] = ()    # item.extra keys that also get an accuracy each

    # -- data ----------------------------------------------------------------------------------------------
    def root(self, data_root: str) -> str:
        return os.path.join(data_root, self.folder)

    def required_files(self, data_root: str) -> List[str]:
        return []

    def check_data(self, data_root: str) -> None:
        missing = [p for p in self.required_files(data_root) if not os.path.exists(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataMissing(f"{self.name} data not found: {missing[0]}{more}; run "
                              f"`python -m prunevid data {self.data_script} --root {data_root}` "
                              f"(data_scripts/{self.data_script}.py) first")

    def list_items(self, data_root: str) -> List[Item]:
        raise NotImplementedError

    def items(self, data_root: str, limit: Optional[int] = None) -> List[Item]:
        self.check_data(data_root)
        items = self.list_items(data_root)
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: item ids are not unique")
        return items if limit is None else items[:limit]

    # -- inputs --------------------------------------------------------------------------------------------
    def frames(self, item: Item, num_frames: int, protocol: str) -> torch.Tensor:
        from .. import video
        sampling = PROTOCOL_SAMPLING[check_protocol(protocol)]
        if item.frame_folder:
            # Frame folders are always read the official way (fps 3, 1-based) with the item's bound.
            return video.load_frame_folder(item.video, num_frames, bound=item.bound)
        if sampling == "linspace" and item.bound is not None:
            # lmms-eval reads MVBench's pre-cut segments (video branch); on the main branch's full videos the
            # same frames are linspace over the bound
            return linspace_in_bound(item.video, num_frames, item.bound)
        return video.load_video(item.video, num_frames, bound=item.bound if sampling == "middle" else None,
                                sampling=sampling)

    # ground truth a method may ask for (``Method.needs_hints``, e.g. the oracle's ``object_masks``): the names
    # this benchmark can give, and ``hints`` gives them for one item (the runner sets them on the patched model)
    provides_hints: Tuple[str, ...] = ()

    def hints(self, item: Item, num_frames: int, protocol: str) -> dict:
        """Ground truth for one item at the frames ``frames(item, num_frames, protocol)`` samples, keyed by the
        names in ``provides_hints``; ``{}`` here (a benchmark of real videos knows none)."""
        return {}

    def prompt(self, item: Item, protocol: str) -> Prompt:
        raise NotImplementedError

    def prompts(self, item: Item, protocol: str) -> List[Prompt]:
        """Prompts generated for one item (VCG consistency asks two questions)."""
        return [self.prompt(item, protocol)]

    def gen_kwargs(self, protocol: str) -> dict:
        check_protocol(protocol)
        return {"max_new_tokens": 100 if protocol == "official" else 16, "do_sample": False, "num_beams": 1}

    def default_frames(self, protocol: str) -> int:
        return PROTOCOL_FRAMES[check_protocol(protocol)]

    # -- scoring -------------------------------------------------------------------------------------------
    options: ProtocolOptions = ProtocolOptions()

    def stops_on_keywords(self, protocol: str) -> bool:
        """Whether generation also stops on upstream's keyword rule (``runner.keywords_stop``): VCG only."""
        return False

    def answer_text(self, prediction: str, protocol: str) -> str:
        """The answer as the protocol's own code keeps it (multiple choice: the generated text; ``score`` parses)."""
        return prediction

    def score(self, item: Item, predictions: List[str], protocol: str) -> Score:
        if check_protocol(protocol) == "official":
            return official_mc_score(item, predictions[0], rule=self.options.answer_parse)
        return lmms_mc_score(item, predictions[0])

    def aggregate(self, rows: List[dict]) -> dict:
        """``metrics``: accuracy in percent over the items with a public answer (errors and unparsed answers
        count as wrong) and per category; ``accuracy_valid`` leaves errored items out."""
        return mc_metrics(rows, self.secondary_categories)

    def finalize(self, rows: List[dict], items: List[Item], output_dir: str) -> Tuple[List[dict], Optional[dict]]:
        """The benchmark's own step after its last item and before ``aggregate`` (lmms-eval's
        ``process_results``/``aggregation`` idea): returns the rows (possibly scored further) and extra
        ``metrics`` entries, or ``None``. VCG runs its LLM judge here; EgoSchema writes its submission file."""
        return rows, None

    def chance(self) -> Dict[str, float]:
        """Per-category chance level in percent, where the benchmark defines one (reports draw it); ``{}``."""
        return {}


def linspace_in_bound(path: str, num_frames: int, bound: Tuple[float, float]) -> torch.Tensor:
    """``np.linspace`` frame indices between the bound's first and last frame -> (T, H, W, 3) uint8."""
    import numpy as np
    from .. import video
    total, fps = video.video_info(path)
    start = max(0, round(bound[0] * fps))
    end = min(round(bound[1] * fps), total - 1)
    idx = np.linspace(start, end, num_frames, dtype=int).tolist()
    if len(set(idx)) < num_frames:
        video._warn_short(f"the bound {bound} of {path} spans {len(set(idx))} distinct frames, fewer than the "
                          f"{num_frames} asked for: indices repeated, as np.linspace samples")
    try:
        import decord
        frames = decord.VideoReader(path, num_threads=1).get_batch(idx).asnumpy()
    except ImportError:
        frames = video._read_with_pyav(path)[0][idx]
    except Exception as e:
        raise video.VideoError(f"cannot decode frames of {path}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(frames))


def _pct(num: int, den: int) -> Optional[float]:
    return 100.0 * num / den if den else None


def mc_metrics(rows: List[dict], secondary: Sequence[str] = ()) -> dict:
    """Accuracy (percent) over the rows with a public answer, overall and per category, with its uncertainty in
    the same percentage points: ``accuracy_stderr`` (lmms-eval's sample sd with n - 1 over √n) and
    ``accuracy_ci95`` (``[low, high]``, Wilson score interval), and ``by_category_stderr`` / ``by_category_ci95``.
    No scored row (EgoSchema's full set has no public answers): accuracy, stderr and interval are None."""
    from ..statistics import accuracy_stderr, wilson_interval
    scored = [r for r in rows if r.get("answer") is not None]
    outcomes = [bool(r.get("correct")) for r in scored]
    n_ok = sum(outcomes)
    valid = [r for r in scored if not r.get("error")]
    by_cat: Dict[str, List[bool]] = {}

    def add(key, row):
        by_cat.setdefault(key, []).append(bool(row.get("correct")))

    for r in scored:
        add(str(r.get("category")), r)
        for key in secondary:
            if r.get(key) is not None:
                add(f"{key}/{r[key]}", r)
    return {"accuracy": _pct(n_ok, len(scored)),
            "accuracy_stderr": accuracy_stderr(outcomes),
            "accuracy_ci95": wilson_interval(n_ok, len(scored)),
            "accuracy_valid": _pct(sum(1 for r in valid if r.get("correct")), len(valid)),
            "n_scored": len(scored),
            "by_category": {k: _pct(sum(v), len(v)) for k, v in by_cat.items()},
            "by_category_stderr": {k: accuracy_stderr(v) for k, v in by_cat.items()},
            "by_category_ci95": {k: wilson_interval(sum(v), len(v)) for k, v in by_cat.items()},
            "by_category_counts": {k: {"correct": sum(v), "total": len(v)} for k, v in by_cat.items()}}


def load_json(path: str):
    import json
    with open(path) as f:
        return json.load(f)
