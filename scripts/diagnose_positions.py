"""Where does position information get lost in a tiny LLaVA? The probes behind docs/tiny-model.md (relation).

    python scripts/diagnose_positions.py --model models/tiny-llava

Prints (1) exact answers to "Where is the <object>?" (row and column separately), (2) linear-probe accuracy of each
object token's row and column after the vision tower, the projector and every LLM layer, (3) the same probes at the
answer position of relation questions for both named objects, and (4) the largest attention weight any head of each
layer puts on the asked-about object's token from the answer position (attribute questions). Held-out scenes drawn
from a fixed seed; one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval import synth  # noqa: E402
from eval.chat import greedy_answer, question_inputs  # noqa: E402


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train_frac: float = 0.7) -> float:
    """Held-out accuracy of a ridge-regularised softmax probe trained on the first train_frac of the rows."""
    n_train = int(train_frac * len(labels))
    x = (features - features[:n_train].mean(0)) / (features[:n_train].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.05)
    with torch.enable_grad():
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(x[:n_train] @ weight + bias, labels[:n_train])
            opt.zero_grad()
            (loss + 1e-3 * weight.pow(2).sum()).backward()
            opt.step()
    with torch.no_grad():
        return ((x[n_train:] @ weight + bias).argmax(-1) == labels[n_train:]).float().mean().item()


def named_objects(scene: synth.Scene, question: str) -> list[synth.Obj]:
    """The objects a relation question names, in the order it names them."""
    return sorted((o for o in scene.objects if o.name in question), key=lambda o: question.index(o.name))


@torch.no_grad()
def main() -> None:
    """Run the four probes and print one block each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/tiny-llava"))
    ap.add_argument("--scenes", type=int, default=120)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = LlavaForConditionalGeneration.from_pretrained(
        args.model, local_files_only=True, attn_implementation="eager"
    ).eval()
    processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
    rng = random.Random(3)
    scenes = [synth.sample_scene(rng, 3, 8) for _ in range(args.scenes)]
    image_id = model.config.image_token_id

    rows_ok = cols_ok = 0
    for scene in scenes[:30]:
        qa = synth.locate_qa(scene, rng)
        said = greedy_answer(model, processor, qa.question, synth.png_bytes(scene), max_new_tokens=6).split()
        truth = qa.answer.split()
        rows_ok += said[:2] == truth[:2]
        cols_ok += said[2:4] == truth[2:4]
    print(f"where-questions (30): row exact {rows_ok}/30, column exact {cols_ok}/30")

    stages: dict[str, list[torch.Tensor]] = {}
    cells = []
    for scene in scenes:
        inputs = question_inputs(processor, "Describe the image.", synth.png_bytes(scene))
        tower = model.model.vision_tower(inputs.pixel_values, output_hidden_states=True).hidden_states[-1][0, 1:]
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        start = inputs.input_ids[0].tolist().index(image_id)
        index = [o.row * scene.grid + o.col for o in scene.objects]
        stages.setdefault("tower", []).append(tower[index])
        for layer, h in enumerate(hidden):
            stages.setdefault("projector" if layer == 0 else f"LLM layer {layer}", []).append(
                h[0, [start + i for i in index]]
            )
        cells += index
    cells_t, grid = torch.tensor(cells), scenes[0].grid
    print(f"object-token probes ({len(cells)} objects): row / column accuracy")
    for stage, feats in stages.items():
        x = torch.cat(feats)
        print(f"  {stage:12s} {probe_accuracy(x, cells_t // grid):.2f} / {probe_accuracy(x, cells_t % grid):.2f}")

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

    peak = torch.zeros(model.config.text_config.num_hidden_layers)
    n = 0
    for scene in scenes[:60]:
        qa = synth.attribute_qa(scene, rng)
        if qa is None:
            continue
        (target,) = synth.question_targets(scene, qa.question)
        inputs = question_inputs(processor, qa.question, synth.png_bytes(scene))
        start = inputs.input_ids[0].tolist().index(image_id)
        attentions = model(**inputs, output_attentions=True).attentions
        position = start + target.row * scene.grid + target.col
        peak += torch.stack([a[0, :, -1, position].max() for a in attentions])
        n += 1
    print(f"answer-position attention on the asked-about object ({n} attribute questions), best head per layer:")
    print("  " + " ".join(f"{v:.2f}" for v in (peak / n).tolist()))


if __name__ == "__main__":
    main()
