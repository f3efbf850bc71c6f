"""Training of the embedded tiny LLaVA (docs/tiny-model.md) and tiny Video-LLaVA on CPU, as reusable parts.

- config: TrainConfig and VideoTrainConfig (one run's settings) and config_parser (one command-line flag per field
  of a config dataclass).
- model: the word-level tokenizer, the LLaVA processor and the random-init model (config from eval.shapes).
- packing: question bundles packed after one image (or video) prefix with a block mask, and their forward pass.
- probes: training-only linear probes reading grid positions or per-token classes from hidden states.
- train: curricula, learning-rate schedule, vision-tower pre-training, evaluation, checkpoints and the training loop.
- diagnose: where a trained model keeps or loses position information (scripts/diagnose_positions.py).
- video: the tiny Video-LLaVA built from the tiny LLaVA, its packed video batches, evaluation and training loop
  (docs/tiny-video-model.md).

scripts/train_tiny_llava.py is the command line of train.train, scripts/train_tiny_video_llava.py of video.train_video.
"""
