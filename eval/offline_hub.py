"""Serve the bundled synthetic data (data/synth) as an offline Hugging Face `datasets` cache under the dataset ids that
lmms-eval's official `pope*`, `mme` and `gqa` tasks load, so those tasks run unchanged without the Hub.

With HF_HUB_OFFLINE=1, `datasets.load_dataset("lmms-lab-encoder/POPE", "Full")` skips the Hub and reads its own arrow
cache, ``<HF_DATASETS_CACHE>/lmms-lab-encoder___pope/Full/0.0.0/<hash>/``. This module writes exactly that layout with
datasets' own Parquet builder, one hash per config (a load without a config name must see one config per hash) and
the `default` config newest (that same load takes the most recently modified config).

    eval "$(python -m eval.offline_hub --cache-dir /tmp/hub)"
    python -m eval.lmms_cli --model sparsevlm --model_args pretrained=models/tiny-llava,method=dense \
        --tasks pope --limit 8
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "synth"
VERSION = "0.0.0"  # what datasets' cache loader finds for a dataset without a version
MARKER = "offline_hub.json"  # in every hash directory this module wrote; written last, so it also means "complete"
REGENERATE = "python scripts/make_synth_data.py --out data/synth"


@dataclass(frozen=True)
class ServedConfig:
    """One config of a Hub dataset as the official task YAMLs load it: split name -> parquet file under data_dir."""

    repo_id: str
    config: str
    splits: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        """Return e.g. 'lmms-lab-encoder/POPE:Full'."""
        return f"{self.repo_id}:{self.config}"


# The dataset_path / dataset_name / test_split of lmms-eval 0.7.3's tasks/{pope,mme,gqa}/*.yaml. POPE's `default`
# comes after `Full` so that it is written (and touched) last.
SERVED: tuple[ServedConfig, ...] = (
    ServedConfig(
        "lmms-lab-encoder/POPE",
        "Full",
        (
            ("adversarial", "pope/adversarial.parquet"),
            ("popular", "pope/popular.parquet"),
            ("random", "pope/random.parquet"),
        ),
    ),
    ServedConfig("lmms-lab-encoder/POPE", "default", (("test", "pope/test.parquet"),)),
    ServedConfig("lmms-lab-encoder/MME", "default", (("test", "mme/test.parquet"),)),
    ServedConfig(
        "lmms-lab-encoder/GQA",
        "testdev_balanced_instructions",
        (("testdev", "gqa/testdev_balanced_instructions.parquet"),),
    ),
    ServedConfig(
        "lmms-lab-encoder/GQA", "testdev_balanced_images", (("testdev", "gqa/testdev_balanced_images.parquet"),)
    ),
)


class OfflineHubError(RuntimeError):
    """A cache that cannot be built; the message is one line."""


def repo_dir(cache_dir: Path, repo_id: str) -> Path:
    """The folder datasets' cache loader looks in for a Hub id: '<namespace>___<snake_case name>'."""
    from datasets.naming import camelcase_to_snakecase

    namespace, name = repo_id.split("/")
    return cache_dir / f"{namespace}___{camelcase_to_snakecase(name)}"


def _sources(served: ServedConfig, data_dir: Path) -> dict[str, Path]:
    """Split -> parquet path, checked to exist."""
    paths = {split: data_dir / rel for split, rel in served.splits}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise OfflineHubError(f"{served.key}: missing {', '.join(missing)} (regenerate: {REGENERATE})")
    return paths


def _content_hash(served: ServedConfig, sources: dict[str, Path]) -> str:
    """A hash of the config name and its files' bytes: each config gets its own, and new data gets a new one."""
    digest = hashlib.sha256(f"{served.repo_id}\0{served.config}".encode())
    for split, path in sources.items():
        digest.update(f"\0{split}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _is_complete(path: Path, content_hash: str, splits: list[str]) -> bool:
    """Whether `path` is a finished build of this content (marker written last) with the expected splits."""
    try:
        marker = json.loads((path / MARKER).read_text())
        info = json.loads((path / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return False
    return marker.get("hash") == content_hash and sorted(info.get("splits", {})) == sorted(splits)


def _check_only_ours(root: Path) -> None:
    """Refuse a dataset folder holding caches this module did not write: newest-wins loading would mix them in."""
    for path in sorted(root.glob("*/*/*")):
        if path.is_dir() and not (path / MARKER).is_file():
            raise OfflineHubError(
                f"{path} was not written by eval.offline_hub (a real or half-written cache?): use another --cache-dir"
            )


def _build_one(served: ServedConfig, sources: dict[str, Path], content_hash: str, cache_dir: Path) -> Path:
    """Write one config with datasets' Parquet builder in a staging folder, then move it into place."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    name = served.repo_id.split("/")[1]
    staging = Path(tempfile.mkdtemp(prefix=".offline_hub-", dir=cache_dir))  # same filesystem: the move is a rename
    try:
        builder = Parquet(
            cache_dir=str(staging),
            dataset_name=name,
            config_name=served.config,
            config_id=served.config,  # the folder name must be the bare config name, not name + data_files hash
            hash=content_hash,
            data_files={split: str(path) for split, path in sources.items()},
        )
        builder.download_and_prepare()
        built = Path(builder.cache_dir)
        marker = {
            "built_by": "eval.offline_hub",
            "repo_id": served.repo_id,
            "config": served.config,
            "hash": content_hash,
            "sources": {split: path.name for split, path in sources.items()},
        }
        (built / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        target = repo_dir(cache_dir, served.repo_id) / served.config / VERSION / content_hash
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.iterdir():  # an older build of this config (other data) or an incomplete one
            if stale.is_dir():
                shutil.rmtree(stale)
        os.replace(built, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _touch_defaults(cache_dir: Path, repo_ids: set[str]) -> None:
    """Make each dataset's `default` config its most recently modified one (what a config-less load picks)."""
    for repo_id in sorted(repo_ids):
        root = repo_dir(cache_dir, repo_id)
        defaults = [p for p in root.glob(f"default/{VERSION}/*") if p.is_dir()]
        others = [p for p in root.glob(f"*/{VERSION}/*") if p.is_dir() and p not in defaults]
        if not defaults or not others:
            continue
        stamp = max(time.time(), max(p.stat().st_mtime for p in others) + 1.0)
        for path in defaults:
            os.utime(path, (stamp, stamp))


def build_offline_hub(cache_dir: Path, data_dir: Path = DATA_DIR) -> dict[str, dict[str, Any]]:
    """Write (or keep, when already current) the served configs into `cache_dir`; returns what each config holds."""
    import datasets
    from filelock import FileLock

    cache_dir = Path(cache_dir).expanduser().resolve()
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise OfflineHubError(f"data directory {data_dir} does not exist (regenerate: {REGENERATE})")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise OfflineHubError(f"--cache-dir {cache_dir} exists and is not a directory")
    cache_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, Any]] = {}
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        with FileLock(str(cache_dir / ".offline_hub.lock")):  # concurrent builders (parallel test workers) take turns
            for leftover in cache_dir.glob(".offline_hub-*"):  # staging of a build that was killed
                shutil.rmtree(leftover, ignore_errors=True)
            for root in {repo_dir(cache_dir, s.repo_id) for s in SERVED}:
                _check_only_ours(root)
            for served in SERVED:
                sources = _sources(served, data_dir)
                content_hash = _content_hash(served, sources)
                target = repo_dir(cache_dir, served.repo_id) / served.config / VERSION / content_hash
                status = "kept"
                if not _is_complete(target, content_hash, list(sources)):
                    target = _build_one(served, sources, content_hash, cache_dir)
                    status = "built"
                info = json.loads((target / "dataset_info.json").read_text())
                summary[served.key] = {
                    "status": status,
                    "path": str(target),
                    "splits": {split: info["splits"][split]["num_examples"] for split in sources},
                }
            _touch_defaults(cache_dir, {s.repo_id for s in SERVED})
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()
    return summary


def offline_env(cache_dir: Path, hf_home: Path | None = None) -> dict[str, str]:
    """Environment variables that make `datasets` (and lmms-eval) read `cache_dir` offline; set before importing them.

    LMMS_EVAL_DATASETS_CACHE is set as well because lmms-eval prefers it over HF_DATASETS_CACHE when present.
    """
    cache = str(Path(cache_dir).expanduser().resolve())
    env = {
        "HF_DATASETS_CACHE": cache,
        "LMMS_EVAL_DATASETS_CACHE": cache,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    if hf_home is not None:
        env["HF_HOME"] = str(Path(hf_home).expanduser().resolve())
    return env


def main(argv: list[str] | None = None) -> int:
    """CLI: build the cache, print `export` lines on stdout (a summary on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m eval.offline_hub",
        description="Serve data/synth as an offline HF datasets cache under the official lmms-eval dataset ids.",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="writable folder (outside the committed tree)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="bundled parquet files (default: data/synth)")
    parser.add_argument(
        "--hf-home", type=Path, default=None, help="export HF_HOME=this (default: keep HF_HOME, or set the HF default)"
    )
    args = parser.parse_args(argv)
    try:
        summary = build_offline_hub(args.cache_dir, args.data_dir)
    except (OfflineHubError, OSError, ValueError) as err:
        print(f"offline_hub: error: {err}".replace("\n", " "), file=sys.stderr)
        return 1
    for key, item in summary.items():
        splits = ", ".join(f"{split}={n}" for split, n in item["splits"].items())
        print(f"offline_hub: {item['status']} {key} ({splits})", file=sys.stderr)
    for name, value in offline_env(args.cache_dir, args.hf_home).items():
        print(f"export {name}={shlex.quote(value)}")
    if args.hf_home is None:
        # some lmms-eval task utils read os.environ["HF_HOME"] at import; keep the user's (and its model cache)
        print('export HF_HOME="${HF_HOME:-$HOME/.cache/huggingface}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
