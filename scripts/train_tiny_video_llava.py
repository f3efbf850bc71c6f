"""Fine-tune a tiny Video-LLaVA on CPU on the synthetic videos of eval/synth_video.py, starting from the tiny LLaVA.

Example (the committed model; defaults are its recipe):
python scripts/train_tiny_video_llava.py --out models/tiny-video-llava --stop-after 3000
The held-out set (data/synth_video, scripts/make_synth_video.py) is only evaluated, never trained on.
"""

from __future__ import annotations

from pathlib import Path

from eval.tiny_train.config import VideoTrainConfig, config_parser
from eval.tiny_train.video import train_video


def main() -> None:
    """Parse arguments (every VideoTrainConfig field is a flag) and train (eval.tiny_train.video.train_video)."""
    parser = config_parser(VideoTrainConfig, __doc__)
    parser.add_argument("--out", type=Path, default=Path("models/tiny-video-llava"))
    parser.add_argument("--eval-dir", type=Path, default=Path("data/synth_video"))
    args = vars(parser.parse_args())
    out, eval_dir = args.pop("out"), args.pop("eval_dir")
    train_video(VideoTrainConfig(**args), out, eval_dir)


if __name__ == "__main__":
    main()
