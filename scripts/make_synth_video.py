"""Write the held-out synthetic video-QA set in Video-LLaVA's MSVD-QA evaluation layout.

Example: python scripts/make_synth_video.py --out data/synth_video
Layout: test_q.json [{video_name, question, question_id}], test_a.json [{answer, type, question_id}] (aligned by
position; type indexes eval.synth_video.FAMILIES) and videos/<video_name>.mp4 (8 frames, lossless H.264).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval import synth_video


def main() -> None:
    """Parse arguments and write the set (eval.synth_video.build_eval_set)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/synth_video"))
    ap.add_argument("--seed", type=int, default=synth_video.EVAL_SEED)
    ap.add_argument("--videos", type=int, default=synth_video.EVAL_VIDEOS)
    args = ap.parse_args()
    for name, n in synth_video.build_eval_set(args.out, args.seed, args.videos).items():
        print(f"{name}: {n}")


if __name__ == "__main__":
    main()
