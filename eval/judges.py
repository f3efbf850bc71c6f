"""Judges of open-ended video-QA answers: the Video-ChatGPT GPT judge (the paper's protocol) and an offline match.

`gpt`: the prompts of Video-ChatGPT's zero-shot QA evaluation, which Video-LLaVA's `eval_video_qa.py` reuses (system
and user text verbatim below): the judge answers with a Python dict string such as `{'pred': 'yes', 'score': 4}`;
accuracy is the share of 'yes', the score the mean of int(score) (0-5). Any OpenAI-compatible chat-completions
endpoint works (OpenAI, a local vLLM or SGLang server): plain HTTP, retried with exponential backoff on 5xx, 429 and
timeouts, and every reply cached on disk under a key of the full request (model and prompts), so a rerun never asks
twice. A judge that cannot be reached, or a reply that cannot be parsed, raises JudgeError: the document fails with
that reason; it is never scored 0.

`match`: normalised answer matching, offline (lower case, punctuation, articles and number words normalised): the
answer's words appear in the prediction. It is not the paper's metric and tables say so.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import string
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JUDGES = ("gpt", "match")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-3.5-turbo"  # what the authors' evaluation script hard-codes
RETRY_STATUS = {429, 500, 502, 503, 504}

SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer "
    "pairs. Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful match "
    "between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: "
    "{answer}\nPredicted Answer: {prediction}\n\nProvide your evaluation only as a yes/no and score where the score is "
    "an integer value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response "
    "in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of "
    "'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
    "EXPLANATION. Only provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}."
)


class JudgeError(RuntimeError):
    """A document the judge could not score (unreachable endpoint, HTTP error, unparsable reply)."""


@dataclass(frozen=True)
class Verdict:
    """One judged answer: correct or not, the 0-5 score (gpt only), and what the judge did (kept per sample)."""

    correct: bool
    score: int | None
    record: dict[str, Any] = field(default_factory=dict)


def judge_messages(question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages of the Video-ChatGPT judge for one question."""
    user = USER_PROMPT.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_reply(reply: str) -> tuple[bool, int]:
    """(correct, score) from a reply like "{'pred': 'yes', 'score': 4}"; JudgeError if it is not one.

    As the authors' scorer: 'pred' counts as yes when it contains "yes", else as no when it contains "no"; the score
    is int(score), so 4.8 counts 4. A score outside 0-5 or a pred that is neither is an error, not a guess.
    """
    match = re.search(r"\{.*?\}", reply, re.DOTALL)
    try:
        data = ast.literal_eval(match.group(0)) if match else None
    except (ValueError, SyntaxError):
        data = None
    if not isinstance(data, dict) or "pred" not in data or "score" not in data:
        raise JudgeError(f"judge reply is not a {{'pred': ..., 'score': ...}} dict: {reply[:200]!r}")
    pred = str(data["pred"]).lower()
    if "yes" in pred:
        correct = True
    elif "no" in pred:
        correct = False
    else:
        raise JudgeError(f"judge reply's pred is neither yes nor no: {reply[:200]!r}")
    try:
        score = int(data["score"])
    except (TypeError, ValueError):
        raise JudgeError(f"judge reply's score is not a number: {reply[:200]!r}") from None
    if not 0 <= score <= 5:
        raise JudgeError(f"judge reply's score {score} is outside 0-5: {reply[:200]!r}")
    return correct, score


class GPTJudge:
    """The Video-ChatGPT judge against an OpenAI-compatible `/chat/completions` endpoint, with a disk cache."""

    name = "gpt"

    def __init__(
        self,
        cache_dir: str | Path,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 2.0,
    ) -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.temperature, self.max_tokens = temperature, max_tokens
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.cache_dir = Path(cache_dir)
        self._unreachable: str | None = None  # after one document exhausts its retries, the rest fail at once
        self._lock = threading.Lock()

    def payload(self, question: str, answer: str, prediction: str) -> dict[str, Any]:
        """The request body; unset sampling options are left to the endpoint, as in the authors' script."""
        body: dict[str, Any] = {"model": self.model, "messages": judge_messages(question, answer, prediction)}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def judge(self, question: str, answer: str, prediction: str) -> Verdict:
        """Judge one answer (from the cache when this exact request was answered before)."""
        body = self.payload(question, answer, prediction)
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.json"
        cached = path.is_file()
        response = json.loads(path.read_text()) if cached else self._post(body)
        try:
            reply = response["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge response has no choices[0].message.content: {str(response)[:200]}") from None
        if not cached:
            self._store(path, response)
        correct, score = parse_reply(reply)
        record = {
            "judge": self.name,
            "judge_model": self.model,
            "reply_model": response.get("model"),
            "system_fingerprint": response.get("system_fingerprint"),
            "reply": reply,
            "cached": cached,
        }
        return Verdict(correct, score, record)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries (5xx, 429, timeouts, refused connections), exponential backoff; JudgeError at the end."""
        if self._unreachable:
            raise JudgeError(self._unreachable)
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:200].decode(errors="replace")
                problem = f"HTTP {err.code} from {url}: {detail}"
                if err.code not in RETRY_STATUS:
                    raise JudgeError(f"judge {self.model}: {problem}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                problem = f"{url} unreachable ({getattr(err, 'reason', err)})"
            except ValueError as err:
                raise JudgeError(f"judge {self.model}: {url} did not answer JSON ({err})") from None
        message = f"judge {self.model}: {problem}, after {self.max_retries + 1} attempts"
        if "unreachable" in problem:
            with self._lock:
                self._unreachable = message
        raise JudgeError(message)

    @staticmethod
    def _store(path: Path, response: dict[str, Any]) -> None:
        """Write one cached response atomically (documents are scored in parallel threads)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(response, handle)
        os.replace(handle.name, path)


NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation or articles, number words as digits ('Two dogs.' -> ['2', 'dogs'])."""
    words = str(text).lower().translate(PUNCTUATION).split()
    return [NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES]


class MatchJudge:
    """Offline: correct when the normalised answer's words appear, in order and adjacent, in the normalised prediction.

    Short reference answers (MSVD, MSRVTT, TGIF: mostly one word) against free-form predictions; an empty answer
    never matches. Not comparable to the GPT judge's accuracy.
    """

    name = "match"

    def judge(self, question: str, answer: str, prediction: str) -> Verdict:
        """Judge one answer (`question` is unused: the match reads only the two answers)."""
        target, words = normalize(answer), normalize(prediction)
        n = len(target)
        correct = n > 0 and any(words[i : i + n] == target for i in range(len(words) - n + 1))
        return Verdict(correct, None, {"judge": self.name, "exact": n > 0 and words == target})


def make_judge(options: dict[str, Any]) -> GPTJudge | MatchJudge:
    """A judge from the task's `video_qa.judge` options ({'name': 'gpt' | 'match', ...}, see conf/judge/)."""
    options = dict(options or {})
    name = options.pop("name", None)
    if name == "match":
        return MatchJudge()
    if name != "gpt":
        raise ValueError(f"judge: got {name!r}, allowed: {', '.join(JUDGES)}")
    api_key_env = options.pop("api_key_env", "OPENAI_API_KEY")
    return GPTJudge(api_key=os.environ.get(api_key_env) if api_key_env else None, **options)
