"""Open-ended video QA (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA) on the files Video-LLaVA's evaluation reads.

Data: `<data_root>/<questions>` (a JSON list of {video_name, question, question_id}), `<data_root>/<answers>` (a JSON
list of {answer, question_id}, joined by question_id) and `<data_root>/<video_dir>/<video_prefix><video_name>.<ext>`,
ext tried in the order .mp4, .avi, .mov, .mkv (Video-LLaVA's), then .webm (ActivityNet's). A questions file that
already holds an `answer` column (.json, .jsonl or .parquet, e.g. the Hub's ActivityNetQA) needs no answers file
(`answers: null`).

The task YAMLs name the files (`video_layout`); the run gives `video_qa`: data_root, first_n (the FastV / SparseVLM
protocol scores the first 1000 questions in file order), layout overrides, and the judge (eval.judges). A missing
video fails its document in doc_to_visual; an unreadable one fails it when the model decodes it; a judge error fails
it in process_results: every one with its reason, none scored 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
from lmms_eval.api.task import ConfigurableTask

from eval.judges import make_judge
from eval.video import probe

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")  # Video-LLaVA's search order, then ActivityNet's webm
LAYOUT_KEYS = ("questions", "answers", "video_dir", "video_prefix")


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .json list, a .jsonl file or a .parquet file."""
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path)).to_list()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = json.loads(path.read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    return rows


def find_video(video_dir: Path, name: str) -> Path | None:
    """The first existing <video_dir>/<name><ext> in VIDEO_EXTENSIONS order, else None."""
    candidates = (video_dir / f"{name}{ext}" for ext in VIDEO_EXTENSIONS)
    return next((path for path in candidates if path.is_file()), None)


def load_documents(layout: dict[str, Any], data_root: str | Path, first_n: int | None = None) -> list[dict[str, Any]]:
    """The task's documents in file order: question_id, video_name, question, answer, video (a path or None)."""
    root = Path(data_root)
    questions = _read_table(root / layout["questions"])
    if layout.get("answers"):
        answers = {str(row["question_id"]): row["answer"] for row in _read_table(root / layout["answers"])}
    else:
        answers = {str(row["question_id"]): row.get("answer") for row in questions}
    if first_n is not None:
        questions = questions[:first_n]
    video_dir = root / layout["video_dir"]
    docs = []
    for row in questions:
        name = f"{layout.get('video_prefix') or ''}{row['video_name']}"
        video = find_video(video_dir, name)
        docs.append(
            {
                "question_id": str(row["question_id"]),
                "video_name": name,
                "question": row["question"],
                "answer": answers.get(str(row["question_id"])),
                "video": str(video) if video else None,
                "video_searched": str(video_dir / name),
            }
        )
    return docs


class VideoQATask(ConfigurableTask):
    """An lmms-eval task whose documents come from the local layout and whose scores come from the run's judge."""

    def __init__(self, config: dict[str, Any]) -> None:
        config = dict(config)
        config.pop("class", None)
        self.layout = dict(config.pop("video_layout"))
        options = dict(config.pop("video_qa", None) or {})
        self.layout.update({key: options[key] for key in LAYOUT_KEYS if options.get(key) is not None})
        if not options.get("data_root"):
            where = f"the folder of {self.layout['questions']}"
            raise ValueError(f"{config.get('task')}: video_qa.data_root is not set ({where})")
        self.data_root, self.first_n = options["data_root"], options.get("first_n")
        self.judge = make_judge(options.get("judge") or {"name": "match"})
        # lmms-eval looks metrics up in its registry unless a task has process_results; this class's method scores
        config["process_results"] = VideoQATask.process_results
        super().__init__(config=config)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        """Documents from the local files (no Hub download)."""
        docs = load_documents(self.layout, self.data_root, self.first_n)
        self.dataset = datasets.DatasetDict({self.config.test_split: datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset

    def process_results(self, doc: dict[str, Any], results: list[str], full_docs: Any = None) -> dict[str, Any]:
        """Judge the answer: accuracy (a dict carrying the judge's record, for the per-sample rows) and the score.

        Raises JudgeError when the judge cannot score it; the runner then fails this document alone.
        """
        prediction = (results[0] or "").strip() if results else ""
        verdict = self.judge.judge(doc["question"], doc["answer"], prediction)
        out: dict[str, Any] = {"accuracy": {"correct": verdict.correct, "judge": verdict.record}}
        if verdict.score is not None:
            out["score"] = verdict.score
        return out


def video_qa_doc_to_visual(doc: dict[str, Any]) -> list[str]:
    """The video's path, once it opens (the model decodes it); FileNotFoundError or VideoError fail the document."""
    if not doc["video"]:
        raise FileNotFoundError(f"no video {doc['video_searched']}{{{','.join(VIDEO_EXTENSIONS)}}}")
    probe(doc["video"])
    return [doc["video"]]


def video_qa_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question as written (Video-LLaVA's evaluation adds no instruction), between optional pre/post prompts."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def video_qa_doc_to_target(doc: dict[str, Any]) -> str:
    """The reference answer."""
    return doc["answer"]


def aggregate_accuracy(items: list[dict[str, Any]]) -> float:
    """Percentage of answers judged correct (the authors' yes / (yes + no): every verdict is one of the two)."""
    return 100.0 * sum(bool(item["correct"]) for item in items) / len(items)


def aggregate_score(items: list[int]) -> float:
    """Mean judge score, 0-5."""
    return sum(items) / len(items)
