"""Write the held-out synthetic POPE / MME / GQA sets as parquet files in the lmms-lab column schemas.

Example: python scripts/make_synth_data.py --out data/synth
Layout: pope/{test,adversarial,popular,random}.parquet, mme/test.parquet,
gqa/testdev_balanced_instructions.parquet and gqa/testdev_balanced_images.parquet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval import synth  # noqa: E402


def write(rows: list[dict], path: Path) -> None:
    """Write rows as parquet with the Hugging Face Image feature on the 'image' column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    if "image" in ds.column_names:
        ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(path))


def make(out: Path, seed: int, pope_images: int, mme_pairs: int, gqa_images: int) -> dict[str, int]:
    """Generate all sets (the seeds match synth.eval_items) and return row counts per file."""
    counts = {}
    pope = synth.build_pope(seed, pope_images)
    for split, rows in pope.items():
        write(rows, out / "pope" / f"{split}.parquet")
        counts[f"pope/{split}"] = len(rows)
    mixed = [r for split in ("adversarial", "popular", "random") for r in pope[split]]
    write(mixed, out / "pope" / "test.parquet")
    counts["pope/test"] = len(mixed)
    mme = synth.build_mme(seed + 1, mme_pairs)
    write(mme, out / "mme" / "test.parquet")
    counts["mme/test"] = len(mme)
    questions, images = synth.build_gqa(seed + 2, gqa_images)
    write(questions, out / "gqa" / "testdev_balanced_instructions.parquet")
    write(images, out / "gqa" / "testdev_balanced_images.parquet")
    counts["gqa/instructions"], counts["gqa/images"] = len(questions), len(images)
    return counts


def main() -> None:
    """Parse arguments and write the sets."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/synth"))
    ap.add_argument("--seed", type=int, default=synth.EVAL_SEED)
    ap.add_argument("--pope-images", type=int, default=50)
    ap.add_argument("--mme-pairs", type=int, default=75)
    ap.add_argument("--gqa-images", type=int, default=100)
    args = ap.parse_args()
    for name, n in make(args.out, args.seed, args.pope_images, args.mme_pairs, args.gqa_images).items():
        print(f"{name}: {n} rows")


if __name__ == "__main__":
    main()
