"""Where does position information get lost in a tiny LLaVA? The probes behind docs/tiny-model.md (relation).

    python scripts/diagnose_positions.py --model models/tiny-llava

Prints (1) exact answers to "Where is the <object>?" (row and column separately), (2) linear-probe accuracy of each
object token's row and column after the vision tower, the projector and every LLM layer, (3) the same probes at the
answer position of relation questions for both named objects, and (4) the largest attention weight any head of each
layer puts on the asked-about object's token from the answer position (attribute questions). Held-out scenes drawn
from a fixed seed; one thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.tiny_train.diagnose import diagnose


def main() -> None:
    """Parse arguments and print the four probes (eval.tiny_train.diagnose)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--scenes", type=int, default=120)
    args = ap.parse_args()
    diagnose(args.model, args.scenes)


if __name__ == "__main__":
    main()
