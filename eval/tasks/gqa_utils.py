"""GQA without the Hub: official process_docs joins images from a second Hub config; this joins a local file."""

from __future__ import annotations

from pathlib import Path

import datasets

SYNTH_IMAGES = Path(__file__).resolve().parents[2] / "data" / "synth" / "gqa" / "testdev_balanced_images.parquet"


def attach_images(dataset: datasets.Dataset, images_file: str | Path) -> datasets.Dataset:
    """Add the `image` column by `imageId` from a parquet file with the columns `id`, `image`."""
    images = datasets.load_dataset("parquet", data_files=str(images_file), split="train")
    index = {image_id: row for row, image_id in enumerate(images["id"])}
    missing = sorted(set(dataset["imageId"]) - set(index))
    if missing:
        raise ValueError(f"gqa: {len(missing)} imageId(s) not in {images_file}, e.g. {missing[0]!r}")
    column = images.select([index[image_id] for image_id in dataset["imageId"]]).select_columns(["image"])
    questions = dataset.remove_columns("image") if "image" in dataset.column_names else dataset
    return datasets.concatenate_datasets([questions, column], axis=1)


def gqa_synth_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """process_docs for data/synth/gqa: images from testdev_balanced_images.parquet next to the questions."""
    return attach_images(dataset, SYNTH_IMAGES)
