"""Where does position information get lost in a tiny LLaVA? The probes behind docs/tiny-model.md (relation).

Four blocks, printed in order: (1) exact answers to "Where is the <object>?" (row and column separately), (2) linear-
probe accuracy of each object token's row and column after the vision tower, the projector and every LLM layer, (3)
the same probes at the answer position of relation questions for both named objects, and (4) the largest attention
weight any head of each layer puts on the asked-about object's token from the answer position (attribute questions).
Held-out scenes drawn from a fixed seed; one thread.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from eval import synth
from eval.chat import greedy_answer, question_inputs

SCENE_SEED = 3  # the diagnosed scenes and questions; not a training or held-out stream of eval.synth
WHERE_SCENES = 30  # scenes asked "Where is the <object>?" in block (1)
ATTENTION_SCENES = 60  # scenes asked an attribute question in block (4)
PROBE_TRAIN_FRAC = 0.7  # rows a probe is fitted on; it is scored on the rest
PROBE_STEPS, PROBE_LR, PROBE_RIDGE = 300, 0.05, 1e-3  # enough steps for the small probes to converge
STD_EPS = 1e-6  # keeps constant feature columns finite when standardising


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train_frac: float = PROBE_TRAIN_FRAC) -> float:
    """Held-out accuracy of a ridge-regularised softmax probe trained on the first train_frac of the rows."""
    n_train = int(train_frac * len(labels))
    x = (features - features[:n_train].mean(0)) / (features[:n_train].std(0) + STD_EPS)
    weight = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=PROBE_LR)
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            loss = torch.nn.functional.cross_entropy(x[:n_train] @ weight + bias, labels[:n_train])
            opt.zero_grad()
            (loss + PROBE_RIDGE * weight.pow(2).sum()).backward()
            opt.step()
    with torch.no_grad():
        return ((x[n_train:] @ weight + bias).argmax(-1) == labels[n_train:]).float().mean().item()


def named_objects(scene: synth.Scene, question: str) -> list[synth.Obj]:
    """The objects a relation question names, in the order it names them."""
    return sorted((o for o in scene.objects if o.name in question), key=lambda o: question.index(o.name))


def where_answers(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[synth.Scene], rng: random.Random
) -> None:
    """Block (1): how often the row and the column of a "Where is ...?" answer are exactly right."""
    rows_ok = cols_ok = 0
    for scene in scenes[:WHERE_SCENES]:
        qa = synth.locate_qa(scene, rng)
        said = greedy_answer(model, processor, qa.question, synth.png_bytes(scene), max_new_tokens=6).split()
        truth = qa.answer.split()  # "row R column C"
        rows_ok += said[:2] == truth[:2]
        cols_ok += said[2:4] == truth[2:4]
    print(
        f"where-questions ({WHERE_SCENES}): row exact {rows_ok}/{WHERE_SCENES}, column exact {cols_ok}/{WHERE_SCENES}"
    )


def object_token_probes(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[synth.Scene]
) -> None:
    """Block (2): row and column probes on each object's visual token after the tower, the projector, every layer."""
    image_id = model.config.image_token_id
    stages: dict[str, list[torch.Tensor]] = {}
    cells = []
    for scene in scenes:
        inputs = question_inputs(processor, "Describe the image.", synth.png_bytes(scene))
        tower = model.model.vision_tower(inputs.pixel_values, output_hidden_states=True).hidden_states[-1][0, 1:]
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        start = inputs.input_ids[0].tolist().index(image_id)
        index = [synth.patch_index(o.row, o.col, scene.grid) for o in scene.objects]
        stages.setdefault("tower", []).append(tower[index])
        for layer, h in enumerate(hidden):
            stages.setdefault("projector" if layer == 0 else f"LLM layer {layer}", []).append(
                h[0, [start + i for i in index]]
            )
        cells += index
    rows, cols = synth.patch_cell(torch.tensor(cells), scenes[0].grid)
    print(f"object-token probes ({len(cells)} objects): row / column accuracy")
    for stage, feats in stages.items():
        x = torch.cat(feats)
        print(f"  {stage:12s} {probe_accuracy(x, rows):.2f} / {probe_accuracy(x, cols):.2f}")


def answer_position_probes(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[synth.Scene], rng: random.Random
) -> None:
    """Block (3): probes of both named objects' rows and columns at the answer position of relation questions."""
    answer_states, labels = [], []
    for scene in scenes:
        qa = synth.relation_qa(scene, rng)
        if qa is None:
            continue
        first, second = named_objects(scene, qa.question)
        hidden = model(
            **question_inputs(processor, qa.question, synth.png_bytes(scene)), output_hidden_states=True
        ).hidden_states
        answer_states.append(torch.stack([h[0, -1] for h in hidden]))
        labels.append((first.row, first.col, second.row, second.col))
    states, lab = torch.stack(answer_states), torch.tensor(labels)
    print(f"answer-position probes, relation questions ({len(lab)}): first row, first col, second row, second col")
    for layer in range(states.shape[1]):
        accs = [probe_accuracy(states[:, layer], lab[:, k]) for k in range(4)]
        print(f"  layer {layer}: " + " ".join(f"{a:.2f}" for a in accs))


def attention_on_target(
    model: LlavaForConditionalGeneration, processor: LlavaProcessor, scenes: list[synth.Scene], rng: random.Random
) -> None:
    """Block (4): per layer, the mean over attribute questions of the best head's attention on the target token."""
    image_id = model.config.image_token_id
    peak = torch.zeros(model.config.text_config.num_hidden_layers)
    n = 0
    for scene in scenes[:ATTENTION_SCENES]:
        qa = synth.attribute_qa(scene, rng)
        if qa is None:
            continue
        (target,) = synth.question_targets(scene, qa.question)
        inputs = question_inputs(processor, qa.question, synth.png_bytes(scene))
        start = inputs.input_ids[0].tolist().index(image_id)
        attentions = model(**inputs, output_attentions=True).attentions
        position = start + synth.patch_index(target.row, target.col, scene.grid)
        peak += torch.stack([a[0, :, -1, position].max() for a in attentions])
        n += 1
    print(f"answer-position attention on the asked-about object ({n} attribute questions), best head per layer:")
    print("  " + " ".join(f"{v:.2f}" for v in (peak / n).tolist()))


@torch.no_grad()
def diagnose(model_dir: Path, n_scenes: int) -> None:
    """Load the model (eager attention, so attention weights exist) and print the four blocks on n_scenes scenes."""
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager"
    ).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    rng = random.Random(SCENE_SEED)
    scenes = [synth.sample_scene(rng, 3, 8) for _ in range(n_scenes)]
    where_answers(model, processor, scenes, rng)
    object_token_probes(model, processor, scenes)
    answer_position_probes(model, processor, scenes, rng)
    attention_on_target(model, processor, scenes, rng)
