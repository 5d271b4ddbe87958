"""LLM judge for VideoChatGPT-Bench over any OpenAI-compatible endpoint, with an on-disk reply cache.

Configured from the environment: ``PRUNEVID_JUDGE_BASE_URL`` (e.g. ``https://api.openai.com/v1`` or a local
vLLM server), ``PRUNEVID_JUDGE_MODEL`` (default ``gpt-3.5-turbo-0125``, PruneVid's judge) and
``OPENAI_API_KEY`` (sent as a bearer token when set). Temperature 0, up to ``retries`` tries with
exponential back-off; a call that still fails scores 0, as the official scorer does. Replies are cached as
JSON lines keyed by (model, system, user), so a rerun never pays for the same judgement twice.
Prompts come from ``vcg_judge_prompts.json`` (or the file named by ``PRUNEVID_JUDGE_PROMPTS``).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, List, Optional


# The five scores of VideoChatGPT-Bench and the question file each is judged on (generic: CI, DO, CU).
DIMENSIONS = {"CI": "generic", "DO": "generic", "CU": "generic", "TU": "temporal", "CO": "consistency"}

DEFAULT_MODEL = "gpt-3.5-turbo-0125"
PROMPT_KEYS = {"CI": "correctness", "DO": "detailed_orientation", "CU": "context", "TU": "temporal",
               "CO": "consistency"}


def load_prompts(path: Optional[str] = None) -> dict:
    path = path or os.environ.get("PRUNEVID_JUDGE_PROMPTS") or os.path.join(os.path.dirname(__file__),
                                                                             "vcg_judge_prompts.json")
    with open(path) as f:
        prompts = json.load(f)
    missing = [k for k in PROMPT_KEYS.values() if k not in prompts]
    if missing:
        raise ValueError(f"judge prompt file {path} lacks {missing}")
    return prompts


def parse_score(text: str, strict: bool = False) -> Optional[float]:
    """``{'score': 4}`` read as upstream's ``check_ans`` reads it (``ast.literal_eval(reply)['score']``); unless
    ``strict``, a reply that is not such a literal is read with the kit's tolerant ``score: 4`` regex."""
    score = _literal_score(text)
    if score is not None or strict:
        return score
    m = re.search(r"(?i)score['\"]?\s*[:=]\s*([0-5](?:\.\d+)?)", text)
    return float(m.group(1)) if m else None


def _literal_score(text: str) -> Optional[float]:
    # upstream passes the reply unstripped to literal_eval, which itself ignores surrounding blanks
    try:
        obj = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)) and not isinstance(obj["score"], bool):
        return float(obj["score"])
    return None


class Judge:
    def __init__(self, base_url: str, model: str = DEFAULT_MODEL, api_key: Optional[str] = None,
                 cache_path: Optional[str] = None, retries: int = 3, backoff_s: float = 2.0, timeout_s: float = 60.0,
                 prompts: Optional[dict] = None, parse: str = "strict", consistency_labels: str = "official"):
        """``parse``: ``"strict"`` (upstream: ``ast.literal_eval`` only; a reply that is not a ``{'score': N}``
        literal is retried, then scores 0) or ``"tolerant"`` (the kit's regex fallback, counted in
        ``fallback_parsed``). ``consistency_labels``: ``"official"`` (upstream's record holds ``question`` = Q2
        and ``question1`` = Q1 after its swap, so the judge reads "Question 1: <Q2>", "Question 2: <Q1>" beside
        the answers to Q1 and Q2) or ``"matched"`` (each question beside its own answer)."""
        if parse not in ("strict", "tolerant") or consistency_labels not in ("official", "matched"):
            raise ValueError(f"judge parse={parse!r} / consistency_labels={consistency_labels!r}: use strict|tolerant "
                             f"and official|matched")
        self.strict = parse == "strict"
        self.consistency_labels = consistency_labels
        self.fallback_parsed = 0
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.prompts = prompts or load_prompts()
        self.cache_path = cache_path
        self.cache: Dict[str, str] = {}
        self.calls = self.failures = 0
        if cache_path and os.path.exists(cache_path):
            with open(cache_path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.cache[row["key"]] = row["reply"]
                    except (json.JSONDecodeError, KeyError):
                        continue   # a torn last line

    @classmethod
    def from_env(cls, cache_path: Optional[str] = None, **kw) -> Optional["Judge"]:
        base = os.environ.get("PRUNEVID_JUDGE_BASE_URL")
        if not base:
            return None
        return cls(base, model=os.environ.get("PRUNEVID_JUDGE_MODEL") or DEFAULT_MODEL,
                   api_key=os.environ.get("OPENAI_API_KEY"), cache_path=cache_path, **kw)

    def _key(self, system: str, user: str) -> str:
        return hashlib.sha256(json.dumps([self.model, system, user]).encode()).hexdigest()

    def _post(self, system: str, user: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0.0,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read().decode())
        return data["choices"][0]["message"]["content"]

    def ask(self, system: str, user: str) -> Optional[str]:
        """The judge's reply (cached), or None after ``retries`` failed tries."""
        key = self._key(system, user)
        if key in self.cache:
            return self.cache[key]
        for attempt in range(self.retries):
            try:
                self.calls += 1
                reply = self._post(system, user)
                if parse_score(reply, strict=self.strict) is None:
                    raise ValueError(f"no score in the reply {reply[:80]!r}")
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, json.JSONDecodeError):
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * (2 ** attempt))
                continue
            self.cache[key] = reply
            if self.cache_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "reply": reply}) + "\n")
                    f.flush()
            return reply
        self.failures += 1
        return None

    def score(self, dim: str, **fields) -> float:
        return self._score(dim, **fields)[0]

    def _score(self, dim: str, **fields) -> tuple:
        """(score, whether only the tolerant regex read it); a failed judgement scores 0."""
        p = self.prompts[PROMPT_KEYS[dim]]
        reply = self.ask(p["system"], p["user"].format(**fields))
        score = parse_score(reply, strict=self.strict) if reply is not None else None
        fallback = score is not None and _literal_score(reply) is None
        self.fallback_parsed += fallback
        return (score if score is not None else 0.0), fallback

    def judge_row(self, row: dict, item) -> dict:
        """Scores of one finished VCG row: CI/DO/CU (generic), TU (temporal) or CO (consistency)."""
        pred = row.get("prediction") or ""
        if row.get("error") or not pred.strip():
            # upstream's chatgpt_eval crashes on an empty prediction (an unbound variable); the kit scores it 0
            return {d: 0.0 for d, cat in DIMENSIONS.items() if cat == row["category"]}
        if row["category"] == "consistency":
            q1, q2 = item.question, item.extra.get("question2", "")
            if self.consistency_labels == "official":
                q1, q2 = q2, q1
            scored = {"CO": self._score("CO", question1=q1, question2=q2, answer=item.answer, pred1=pred,
                                        pred2=row.get("prediction2") or "")}
        else:
            dims = [d for d, cat in DIMENSIONS.items() if cat == row["category"]]
            scored = {d: self._score(d, question=item.question, answer=item.answer, pred=pred) for d in dims}
        out = {d: score for d, (score, _) in scored.items()}
        n_fallback = sum(fallback for _, fallback in scored.values())
        if n_fallback:
            out["fallback_parsed"] = n_fallback
        return out


def judge_rows(judge: Judge, rows: List[dict], items_by_id: dict, log: Callable = print) -> List[dict]:
    """Rows with a ``judge`` dict added (new dicts; samples.jsonl is not rewritten)."""
    out = []
    for r in rows:
        item = items_by_id.get(r["id"])
        out.append(dict(r, judge=judge.judge_row(r, item)) if item is not None else r)
    if judge.failures:
        log(f"[judge] {judge.failures} judgement(s) failed after {judge.retries} tries and score 0")
    return out
