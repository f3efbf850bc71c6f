"""Standard errors of a cell's primary value: the jackknife over documents and its combination over tasks."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest

from eval.run import add_stderrs, jackknife_stderr, primary_stderr


def _mean(items: list[float]) -> float:
    return sum(items) / len(items)


def test_jackknife_of_a_mean_is_the_clt_standard_error() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    expected = statistics.stdev(scores) / math.sqrt(len(scores))  # lmms-eval's _stderr_clt
    assert jackknife_stderr(scores, _mean, list(range(len(scores)))) == pytest.approx(expected, rel=1e-12)
    assert jackknife_stderr([1.0], _mean, [0]) is None  # one group: no spread to measure


def test_jackknife_leaves_scoring_groups_out_whole() -> None:
    pairs = [("a", 1.0), ("a", 1.0), ("b", 1.0), ("b", 0.0), ("c", 0.0), ("c", 0.0)]

    def acc_plus(items: list[tuple[str, float]]) -> float:
        by_pair: dict[str, list[float]] = {}
        for pair, score in items:
            by_pair.setdefault(pair, []).append(score)
        assert all(len(scores) == 2 for scores in by_pair.values()), "a pair was split"
        return _mean([float(sum(s) == 2) for s in by_pair.values()])

    stderr = jackknife_stderr(pairs, acc_plus, [0, 0, 1, 1, 2, 2])
    assert stderr == pytest.approx(statistics.stdev([1.0, 0.0, 0.0]) / math.sqrt(3))
    with pytest.raises(AssertionError, match="split"):
        jackknife_stderr(pairs, acc_plus, list(range(6)))


def test_blocks_bound_the_number_of_recomputations() -> None:
    calls = []

    def counted(items: list[float]) -> float:
        calls.append(len(items))
        return _mean(items)

    jackknife_stderr([float(i % 2) for i in range(1000)], counted, list(range(1000)), blocks=10)
    assert calls == [900] * 10


def _spec(tasks: tuple[str, ...], combine: str = "mean", scale: float = 100.0, metrics=("acc",), group: int = 1):
    return SimpleNamespace(
        task=SimpleNamespace(lmms_tasks=tasks, metrics=metrics, combine=combine, scale=scale, limit_multiple=group)
    )


def test_primary_stderr_is_combined_like_the_value() -> None:
    results = {
        "a": {"acc,none": 0.9, "acc_stderr_jackknife,none": 0.02},
        "b": {"acc,none": 0.8, "acc_stderr_jackknife,none": 0.04},
    }
    mean = primary_stderr(results, _spec(("a", "b")))
    assert mean == {"stderr": pytest.approx(3.0), "stderr_method": "jackknife over documents", "stderr_missing": []}
    assert primary_stderr(results, _spec(("a", "b"), combine="sum", scale=2.0))["stderr"] == pytest.approx(0.12)
    del results["b"]["acc_stderr_jackknife,none"]
    partial = primary_stderr(results, _spec(("a", "b")))
    assert partial["stderr"] is None and partial["stderr_missing"] == ["b/acc"]
    assert primary_stderr({"a": {"acc,none": 0.9}}, _spec(("a",))) == {}  # nothing to say: no stderr at all


def test_add_stderrs_uses_the_tasks_own_aggregation_on_logged_items() -> None:
    def f1(items: list[dict]) -> float:  # not a mean of per-item scores: a CLT stderr of "score" would not apply
        tp = sum(i["pred"] == i["gt"] == "yes" for i in items)
        fp = sum(i["pred"] == "yes" != i["gt"] for i in items)
        fn = sum(i["pred"] == "no" != i["gt"] for i in items)
        return 2 * tp / (2 * tp + fp + fn)

    rows = [("yes", "yes"), ("yes", "no"), ("no", "yes"), ("yes", "yes"), ("no", "no"), ("yes", "yes")]
    samples = {"pope": [{"doc_id": i, "f1": {"pred": p, "gt": g}} for i, (p, g) in enumerate(rows)]}
    task = SimpleNamespace(aggregation=lambda: {"f1": f1}, args=None)
    results = {"pope": {"f1,none": f1([s["f1"] for s in samples["pope"]])}}
    add_stderrs(results, samples, {"pope": task}, _spec(("pope",), metrics=("f1",)))
    items = [s["f1"] for s in samples["pope"]]
    leave_one_out = [f1(items[:i] + items[i + 1 :]) for i in range(len(items))]
    expected = math.sqrt(5 / 6 * sum((e - _mean(leave_one_out)) ** 2 for e in leave_one_out))
    assert results["pope"]["f1_stderr_jackknife,none"] == pytest.approx(expected)
