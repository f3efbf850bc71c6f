"""The tiny-model trainer's settings, and a command line with one flag per setting."""

from __future__ import annotations

import argparse
import dataclasses

from eval import synth, synth_video


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run."""

    seed: int = synth.TRAIN_SEED
    grid: int = 12
    patch: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 128
    text_layers: int = 8
    text_heads: int = 4
    text_intermediate: int = 384
    # LLaMA's 0.02 suits width 4096; at width 128 it leaves attention logits ~0 and stalls learning for thousands of
    # steps, while ~1/sqrt(width) lets look-ups form within a few hundred
    init_std: float = 0.08
    steps: int = 2800
    batch: int = 8
    lr: float = 2e-3
    warmup: int = 100
    align_frac: float = 0.05
    min_keep: float = 0.05
    dropout_until: float = 0.3
    dropout_ramp: float = 0.3
    ramp_frac: float = 0.4
    max_minutes: float = 62.0
    stop_after: int = 0  # stop after this many steps (0: all of them); the schedules still span `steps`
    save_every_s: float = 300.0
    eval_every: int = 400
    init_from: str = ""  # continue from a saved model directory instead of a random init
    vision_steps: int = 300  # supervised per-patch pre-training steps of the vision tower before the LLaVA stages
    vision_batch: int = 32
    vision_lr: float = 3e-3
    freeze_vision: bool = True  # keep the (pre-trained) vision tower fixed in the LLaVA stages, like LLaVA's CLIP
    threads: int = 1
    bootstrap: bool = True  # add "Where is the X?" and single-attribute existence questions to every bundle
    position_turns: int = 0  # extra questions per bundle that need positions (where / relation / MME position)
    # weight of an auxiliary loss keeping each visual token's row and column linearly readable (12-way and ordinal)
    # from the LLM's residual stream at these layers; the probe heads are dropped after training
    position_aux: float = 0.0
    position_aux_layers: str = "0,2,4"
    # weight of an auxiliary loss making the question token that names an object (the "circle" of "the red circle")
    # carry that object's row and column at these layers: supervises the look-up that relation questions need
    mention_aux: float = 0.0
    mention_aux_layers: str = "2,4"
    # weight of an auxiliary loss making the token that predicts the answer of a two-object question carry the row and
    # column of the first- and of the second-named object at these layers: the role-bound read-out a relation needs
    answer_aux: float = 0.0
    answer_aux_layers: str = "5,6"


@dataclasses.dataclass
class VideoTrainConfig:
    """Everything that defines a tiny Video-LLaVA fine-tuning run (eval/tiny_train/video.py)."""

    seed: int = synth_video.TRAIN_SEED
    init_from: str = "models/tiny-llava"  # the trained tiny LLaVA whose LLM, projector and tower start the model
    resume_from: str = ""  # continue from a saved tiny Video-LLaVA instead (init_from is then unused)
    grid: int = synth_video.GRID  # patches per frame side: grid x grid visual tokens (+ CLS) per frame
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 30
    max_minutes: float = 60.0
    stop_after: int = 0  # stop after this many steps (0: all of them); the schedule still spans `steps`
    save_every_s: float = 300.0
    eval_every: int = 250
    freeze_vision: bool = True  # keep the tiny LLaVA's pre-trained tower fixed, like Video-LLaVA's LanguageBind
    threads: int = 1
    # weight of an auxiliary loss making the token that predicts an answer carry the row and column of the cells the
    # answer is read from (the named object; the mover's first and last cell) at these layers; heads dropped after
    answer_aux: float = 1.0
    answer_aux_layers: str = "5,6"
    # weight of an auxiliary loss making each video token say what changed at its cell since the previous frame
    # (synth_video.EVENTS: appeared, vanished, the mover arrived from a direction, ...) at these layers; the comparison
    # of a token with the same cell one frame earlier is what every question family needs
    event_aux: float = 1.0
    event_aux_layers: str = "2,4"
    event_weight: float = 10.0  # weight of the event tokens (a few of 288) over unchanged ones in that loss


def config_parser(config_type: type, description: str | None = None) -> argparse.ArgumentParser:
    """A parser with one flag per field of a config dataclass: --field-name VALUE, or --[no-]field-name for booleans."""
    parser = argparse.ArgumentParser(description=description)
    for field in dataclasses.fields(config_type):
        flag = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return parser
