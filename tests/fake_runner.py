"""Run `python -m eval.run` with a fake, instant evaluation: for process-level tests (exit codes, locks, kills).

python tests/fake_runner.py --log computed.log [--sleep S] [--fail] [--die-at POINT] -- <eval.run arguments>

The fake evaluation appends the run id to --log (so tests count how often each cell was computed), sleeps, and
returns one metric value per task. --die-at kills this process with SIGKILL at one moment of a cell's life:
  evaluate        while evaluating (nothing written yet)
  samples         right after samples.jsonl is renamed into place, before record.json
  record          right after record.json is written, before running.json is removed
  wandb           while logging to W&B (the record says wandb "pending")
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import eval.records as records
import eval.run as runner

POINTS = ("evaluate", "samples", "record", "wandb")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    """Parse the fake's options, patch the runner, run eval.run's CLI."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true", help="the evaluation raises")
    parser.add_argument("--die-at", choices=POINTS)
    options, rest = parser.parse_known_args()
    args = rest[1:] if rest[:1] == ["--"] else rest

    def evaluate(spec, device, guard):
        with options.log.open("a") as handle:
            handle.write(f"{spec.run_id} {os.getpid()}\n")
        time.sleep(options.sleep)
        if options.die_at == "evaluate":
            _die()
        if options.fail:
            raise RuntimeError("fake evaluation failure")
        results = {task: {f"{m},none": 0.5 for m in spec.task.metrics} for task in spec.task.lmms_tasks}
        first = spec.task.lmms_tasks[0]
        guard.docs_seen.setdefault(first, set()).update({0, 1})
        samples = {first: [{"doc_id": i, "target": "yes", "filtered_resps": ["yes"]} for i in (0, 1)]}
        efficiency = [{"task": first, "doc_id": i, "equivalent_tokens": 16.0, "e2e_ms": 1.0} for i in (0, 1)]
        return results, samples, efficiency

    runner.evaluate = evaluate
    if options.die_at in ("samples", "record"):
        original = records._atomic_write

        def atomic_write(path, write):
            original(path, write)
            if (options.die_at, path.name) in (("samples", "samples.jsonl"), ("record", "record.json")):
                _die()

        records._atomic_write = atomic_write
    if options.die_at == "wandb":
        import eval.wandb_logger as wandb_logger

        wandb_logger.log_run = lambda *a, **k: _die()
    sys.argv = ["eval.run"]
    runner.main(args)


if __name__ == "__main__":
    main()
