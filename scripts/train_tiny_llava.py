"""Train a tiny LLaVA (CLIP tower + 8-layer LLaMA) from scratch on CPU on the synthetic scenes of eval/synth.py.

Example (the committed model; defaults are its recipe): python scripts/train_tiny_llava.py --out models/tiny-llava
Each training image carries a bundle of questions packed as separate turns that attend only to the shared image prefix
(block mask, per-turn position ids), so training matches single-question inference exactly.
"""

from __future__ import annotations

from pathlib import Path

from eval.tiny_train.config import TrainConfig, config_parser
from eval.tiny_train.train import train


def main() -> None:
    """Parse arguments (every TrainConfig field is a flag) and train (eval.tiny_train.train)."""
    parser = config_parser(TrainConfig, __doc__)
    parser.add_argument("--out", type=Path, default=Path("models/tiny-llava"))
    parser.add_argument("--eval-per-family", type=int, default=300)
    args = vars(parser.parse_args())
    out, per_family = args.pop("out"), args.pop("eval_per_family")
    train(TrainConfig(**args), out, per_family)


if __name__ == "__main__":
    main()
