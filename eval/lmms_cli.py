"""lmms-eval's own command line with this harness's model registered as `--model sparsevlm`.

    python -m eval.lmms_cli --model sparsevlm \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=sparsevlm,budget=64 --tasks pope --batch_size 1

The harness runs from its checkout and is not in the `sparsevlm` wheel, so it registers no `lmms_eval.models` entry
point (a wheel's entry point naming a module the wheel lacks would break lmms-eval's plugin loading for everyone); this
module registers the model in-process instead and hands every argument to lmms-eval unchanged.
"""

from __future__ import annotations


def main() -> None:
    """Register SparseVLMModel with lmms-eval's model registry, then run lmms-eval's CLI on sys.argv."""
    from lmms_eval.cli.dispatch import main as lmms_eval_main
    from lmms_eval.models import MODEL_REGISTRY_V2

    from eval.lmms_model import manifests

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
    lmms_eval_main()


if __name__ == "__main__":
    main()
