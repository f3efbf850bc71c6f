"""Training of the embedded tiny LLaVA from scratch on CPU (docs/tiny-model.md), as reusable parts.

- config: TrainConfig (one run's settings) and config_parser (one command-line flag per field of a config dataclass).
- model: the word-level tokenizer, the LLaVA processor and the random-init model (config from eval.shapes).
- packing: question bundles packed after one image prefix with a block mask, and their forward pass.
- probes: training-only linear probes that keep grid positions readable from hidden states.
- train: curricula, learning-rate schedule, vision-tower pre-training, evaluation, checkpoints and the training loop.
- diagnose: where a trained model keeps or loses position information (scripts/diagnose_positions.py).

scripts/train_tiny_llava.py is the command line of train.train.
"""
