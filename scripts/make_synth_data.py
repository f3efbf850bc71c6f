"""Write the held-out synthetic POPE / MME / GQA sets as parquet files in the lmms-lab column schemas.

Example: python scripts/make_synth_data.py --out data/synth
Layout: pope/{test,adversarial,popular,random}.parquet, mme/test.parquet,
gqa/testdev_balanced_instructions.parquet and gqa/testdev_balanced_images.parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval import synth


def main() -> None:
    """Parse arguments and write the sets (eval.synth.write_held_out)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/synth"))
    ap.add_argument("--seed", type=int, default=synth.EVAL_SEED)
    ap.add_argument("--pope-images", type=int, default=synth.POPE_IMAGES)
    ap.add_argument("--mme-pairs", type=int, default=synth.MME_PAIRS)
    ap.add_argument("--gqa-images", type=int, default=synth.GQA_IMAGES)
    args = ap.parse_args()
    for name, n in synth.write_held_out(args.out, args.seed, args.pope_images, args.mme_pairs, args.gqa_images).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
