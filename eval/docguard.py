"""Per-document failure isolation for lmms-eval tasks: one bad document fails alone, the cell scores the rest.

lmms-eval (0.7.3) evaluates a task in three passes over its documents, and any exception in any of them aborts the whole
evaluation (often after minutes of retries, as an opaque `RetryError`). DocGuard wraps one Task *instance* (nothing
global is patched) so that a document that cannot be built, run or scored is recorded as failed, with task, doc id and
reason, and is left out of every metric:
- building requests (`fewshot_context` + `construct_requests`): the prompt, the target and the images are checked,
  images decoded strictly (a truncated file is a per-document warning, then decoded as lmms-eval does, with the missing
  pixels filled); a failing document gets no request, and lmms-eval then skips it when scoring;
- generation: the model reports a request that fails even when run alone (`record`), and `apply_filters`, which runs
  right before scoring, drops that document's requests;
- scoring (`process_results`): a document whose scorer raises contributes no metric values (its retries are skipped:
  a deterministic scorer fails the same way five times).
Documents scored in groups (MME's question pairs) fail together: a pair with one failed member is not scorable.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import ImageFile

log = logging.getLogger("eval.docguard")
ITERATOR_DEFAULTS = {"rank": 0, "limit": None, "world_size": 1, "offset": 0}  # Task.doc_iterator's keyword defaults


def _reason(err: BaseException) -> str:
    """One line: exception type and the first line of its message (object addresses removed: reasons are compared)."""
    message = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {message[0]}" if message else type(err).__name__
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


@contextmanager
def strict_image_decoding() -> Iterator[None]:
    """Decode images without PIL's truncated-file tolerance (lmms-eval switches it on for the whole process)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _image_columns(docs: Any) -> list[str]:
    """Names of a datasets.Dataset's image columns ([] for other document containers)."""
    features = getattr(docs, "features", None) or {}
    return [name for name, kind in features.items() if type(kind).__name__ == "Image"]


class DocGuard:
    """Failed and warned documents of one evaluation, keyed by (task, doc_id)."""

    def __init__(self, group_size: int = 1) -> None:
        self.group_size = group_size
        self.failures: dict[tuple[str, int], str] = {}
        self.warnings: dict[tuple[str, int], list[str]] = {}
        self.docs_seen: dict[str, set[int]] = {}
        self._lock = threading.Lock()  # lmms-eval scores documents in worker threads

    # ------------------------------------------------------------------------------------------------ bookkeeping
    def record(self, task: str, doc_id: int, reason: str) -> None:
        """Mark a document failed (and its scoring group: a pair with one member missing cannot be scored)."""
        with self._lock:
            self.failures.setdefault((task, doc_id), reason)
            start = doc_id - doc_id % self.group_size
            for partner in range(start, start + self.group_size):
                if partner != doc_id:
                    self.failures.setdefault((task, partner), f"scored together with doc {doc_id}, which failed")
        log.warning("%s doc %s failed: %s", task, doc_id, reason)

    def warn(self, task: str, doc_id: int, message: str) -> None:
        """Attach a warning to a document that is still scored."""
        with self._lock:
            self.warnings.setdefault((task, doc_id), []).append(message)
        log.warning("%s doc %s: %s", task, doc_id, message)

    def failed(self, task: str, doc_id: int) -> bool:
        """Whether the document is excluded from scoring."""
        return (task, doc_id) in self.failures

    @property
    def n_docs(self) -> int:
        """Documents of the evaluated range (failed ones included)."""
        return sum(len(ids) for ids in self.docs_seen.values())

    # ------------------------------------------------------------------------------------------------ checks
    def check_document(self, task_name: str, task: Any, doc_id: int) -> None:
        """Decode the full document (strict images) and check its images, visuals and target; record what is wrong."""
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        try:
            with strict_image_decoding():
                doc = docs[doc_id]
        except OSError as err:
            if "truncated" not in str(err):
                self.record(task_name, doc_id, f"image: {_reason(err)}")
                return
            self.warn(task_name, doc_id, f"image truncated ({_reason(err)}); decoded with the missing pixels filled")
            doc = docs[doc_id]
        except Exception as err:
            self.record(task_name, doc_id, f"document: {_reason(err)}")
            return
        null_images = [name for name in _image_columns(docs) if doc.get(name) is None]
        if null_images:
            self.record(task_name, doc_id, f"image: missing (column {null_images[0]!r} is null)")
            return
        for step, function in (("doc_to_visual", task.doc_to_visual), ("doc_to_target", task.doc_to_target)):
            try:
                value = function(doc)
            except Exception as err:
                self.record(task_name, doc_id, f"{step}: {_reason(err)}")
                return
            if value is None or (step == "doc_to_visual" and isinstance(value, list) and None in value):
                self.record(task_name, doc_id, f"{step}: missing (null)")
                return

    # ------------------------------------------------------------------------------------------------ wrapping
    def attach(self, task_name: str, task: Any) -> Any:
        """Wrap one lmms-eval Task instance's per-document steps; returns the task."""
        guard = self
        pending: dict[int, str] = {}  # thread id -> error from building the prompt, consumed by construct_requests
        doc_ids: dict[int, int] = {}  # id(doc) -> doc_id while scoring (process_results only receives the doc)
        seen = self.docs_seen.setdefault(task_name, set())
        fewshot_context, construct_requests = task.fewshot_context, task.construct_requests
        apply_filters = task.apply_filters
        process_results = getattr(type(task).process_results, "__wrapped__", type(task).process_results)

        def guarded_fewshot_context(doc: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fewshot_context(doc, *args, **kwargs)
            except Exception as err:
                pending[threading.get_ident()] = f"doc_to_text: {_reason(err)}"
                return ""

        def guarded_construct_requests(doc_id: int, ctx: Any, **kwargs: Any) -> Any:
            seen.add(doc_id)
            error = pending.pop(threading.get_ident(), None)
            if error is not None:
                guard.record(task_name, doc_id, error)
            elif not guard.failed(task_name, doc_id):
                guard.check_document(task_name, task, doc_id)
            if guard.failed(task_name, doc_id):
                return []  # no request: lmms-eval skips documents without requests when scoring
            return construct_requests(doc_id=doc_id, ctx=ctx, **kwargs)

        def guarded_apply_filters() -> Any:
            task._instances = [i for i in task._instances if not guard.failed(task_name, i.doc_id)]
            return apply_filters()

        def guarded_doc_iterator(**kwargs: Any) -> Iterator[tuple[int, Any]]:
            # The task's own iterator decodes every document, failed ones too (a garbage image raises there):
            # take the same document ids, and decode only the documents that are still scored.
            from lmms_eval.utils import create_iterator

            docs = task.eval_docs
            options = {key: kwargs.get(key, default) for key, default in ITERATOR_DEFAULTS.items()}
            options["limit"] = int(options["limit"]) if options["limit"] else None
            ids = create_iterator(range(len(docs)), **options)
            for doc_id in ids:
                if guard.failed(task_name, doc_id):
                    continue
                doc = docs[doc_id]
                doc_ids[id(doc)] = doc_id
                yield doc_id, doc

        def guarded_process_results(doc: Any, results: Any, **kwargs: Any) -> dict:
            try:
                return process_results(task, doc, results, **kwargs)
            except Exception as err:
                guard.record(task_name, doc_ids.get(id(doc), -1), f"process_results: {_reason(err)}")
                return {}  # no metric values: the document drops out of every aggregate

        task.fewshot_context = guarded_fewshot_context
        task.construct_requests = guarded_construct_requests
        task.apply_filters = guarded_apply_filters
        task.doc_iterator = guarded_doc_iterator
        task.process_results = guarded_process_results
        return task
