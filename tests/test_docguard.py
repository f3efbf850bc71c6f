"""DocGuard bookkeeping: documents scored in groups fail together; strict image decoding is scoped."""

from __future__ import annotations

from PIL import ImageFile

from eval.docguard import DocGuard, strict_image_decoding


def test_a_failed_document_takes_its_scoring_pair_with_it():
    guard = DocGuard(group_size=2)
    guard.record("mme", 5, "image: missing (null)")
    assert guard.failures == {
        ("mme", 5): "image: missing (null)",
        ("mme", 4): "scored together with doc 5, which failed",
    }
    assert not guard.failed("mme", 6) and not guard.failed("other", 5)


def test_single_documents_fail_alone_and_the_first_reason_wins():
    guard = DocGuard()
    guard.record("pope", 3, "doc_to_text: KeyError: 'question'")
    guard.record("pope", 3, "generation: RuntimeError: later")
    assert guard.failures == {("pope", 3): "doc_to_text: KeyError: 'question'"}


def test_strict_image_decoding_is_scoped():
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what lmms-eval sets for the whole process
    with strict_image_decoding():
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
