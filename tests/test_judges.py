"""The judges: the GPT judge's exact request, parsing, retries, cache and failures against a fake OpenAI-compatible
server on 127.0.0.1; the offline match."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval.judges import GPTJudge, JudgeError, MatchJudge, judge_messages, make_judge, normalize, parse_reply


class Handler(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted (status, reply) and keeps what it received."""

    script: list[tuple[int, str]] = []
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, reply = Handler.script.pop(0)
        data = json.dumps({"model": "gpt-3.5-turbo-0125", "choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(status)
        self.end_headers()
        self.wfile.write(data if status == 200 else b"overloaded")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.script, Handler.received = [], []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _judge(base_url, tmp_path, **options):
    return GPTJudge(tmp_path / "cache", base_url=base_url, api_key="sk-test", backoff_s=0.01, **options)


def test_the_request_is_the_video_chatgpt_prompt(server, tmp_path):
    Handler.script = [(200, "{'pred': 'yes', 'score': 4}")]
    verdict = _judge(server, tmp_path).judge("what is the man doing?", "cooking", "He is cooking.")
    [request] = Handler.received
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body == {
        "model": "gpt-3.5-turbo",
        "messages": judge_messages("what is the man doing?", "cooking", "He is cooking."),
    }
    system, user = (m["content"] for m in body["messages"])
    assert system.startswith("You are an intelligent chatbot designed for evaluating the correctness of generative")
    assert "accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful match" in system
    assert system.endswith("- Evaluate the correctness of the prediction compared to the answer.")
    assert user.startswith(
        "Please evaluate the following video-based question-answer pair:\n\nQuestion: what is the man doing?\n"
        "Correct Answer: cooking\nPredicted Answer: He is cooking.\n\nProvide your evaluation only as a yes/no"
    )
    assert "value of 'pred' is  a string of 'yes' or 'no'" in user and "not STRING.DO NOT PROVIDE" in user
    assert user.endswith("your response should look like this: {'pred': 'yes', 'score': 4.8}.")
    assert (verdict.correct, verdict.score) == (True, 4)
    assert verdict.record == {
        "judge": "gpt",
        "judge_model": "gpt-3.5-turbo",
        "reply_model": "gpt-3.5-turbo-0125",
        "system_fingerprint": None,
        "reply": "{'pred': 'yes', 'score': 4}",
        "cached": False,
    }


def test_sampling_options_are_sent_only_when_set(server, tmp_path):
    Handler.script = [(200, "{'pred': 'no', 'score': 0}")]
    _judge(server, tmp_path, temperature=0.0, max_tokens=64).judge("q", "a", "b")
    assert Handler.received[0]["body"]["temperature"] == 0.0 and Handler.received[0]["body"]["max_tokens"] == 64


def test_a_500_is_retried_then_the_reply_is_used(server, tmp_path):
    Handler.script = [(500, ""), (503, ""), (200, "{'pred': 'no', 'score': 2}")]
    verdict = _judge(server, tmp_path).judge("q", "a", "b")
    assert (verdict.correct, verdict.score) == (False, 2) and len(Handler.received) == 3


def test_a_rerun_hits_the_cache(server, tmp_path):
    Handler.script = [(200, "{'pred': 'yes', 'score': 5}")]
    first = _judge(server, tmp_path).judge("q", "a", "a")
    again = _judge(server, tmp_path).judge("q", "a", "a")  # a new judge: the cache is on disk
    assert len(Handler.received) == 1 and again.record["cached"] is True and first.record["cached"] is False
    assert (again.correct, again.score, again.record["reply"]) == (first.correct, first.score, first.record["reply"])
    Handler.script = [(200, "{'pred': 'no', 'score': 1}")]
    _judge(server, tmp_path, model="other-judge").judge("q", "a", "a")  # another judge model is another key
    assert len(Handler.received) == 2


def test_a_client_error_is_not_retried(server, tmp_path):
    Handler.script = [(401, "")]
    with pytest.raises(
        JudgeError, match=r"^judge gpt-3.5-turbo: HTTP 401 from http://127.0.0.1:\d+/v1/chat/completions"
    ):
        _judge(server, tmp_path).judge("q", "a", "b")
    assert len(Handler.received) == 1


def test_a_down_server_is_a_clear_error_and_later_documents_fail_at_once(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge = _judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2)
    with pytest.raises(JudgeError, match=rf"127.0.0.1:{port}/v1/chat/completions unreachable .*after 3 attempts$"):
        judge.judge("q", "a", "b")
    with pytest.raises(JudgeError, match="unreachable"):
        judge.judge("q2", "a2", "b2")  # no second round of retries
    assert not (tmp_path / "cache").exists()  # nothing cached, nothing scored


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("{'pred': 'yes', 'score': 4}", (True, 4)),
        ("{'pred': 'no', 'score': 0}", (False, 0)),
        ("Sure! {'pred': 'Yes', 'score': 4.8}", (True, 4)),  # int(4.8), as the authors' scorer
        ('{"pred": "no", "score": "3"}', (False, 3)),
    ],
)
def test_replies_are_parsed_like_the_authors_scorer(reply, verdict):
    assert parse_reply(reply) == verdict


@pytest.mark.parametrize(
    "reply",
    ["yes, 4", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes', 'score': 7}", "{'pred': 'yes'}", "{'score': 'x'}"],
)
def test_unparsable_replies_are_errors_not_zeros(reply):
    with pytest.raises(JudgeError):
        parse_reply(reply)


def test_match_normalises_case_punctuation_articles_and_number_words():
    assert normalize("The Two dogs, running!") == ["2", "dogs", "running"]
    judge = MatchJudge()
    assert judge.judge("q", "two", "There are 2 dogs.").correct
    assert judge.judge("q", "a woman", "The woman is singing").correct
    assert not judge.judge("q", "dog", "a hotdog").correct  # whole words only
    assert not judge.judge("q", "", "anything").correct
    assert judge.judge("q", "red", "Red.").record == {"judge": "match", "exact": True}


def test_make_judge_reads_the_key_from_the_named_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-mine")
    judge = make_judge({"name": "gpt", "api_key_env": "MY_JUDGE_KEY", "cache_dir": str(tmp_path)})
    assert judge.api_key == "sk-mine" and judge.model == "gpt-3.5-turbo"
    with pytest.raises(ValueError, match="judge: got 'gpt4', allowed: gpt, match"):
        make_judge({"name": "gpt4"})
