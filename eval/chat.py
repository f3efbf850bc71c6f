"""One question about one image through a LLaVA processor's chat template, as a user would ask it."""

from __future__ import annotations

import io

import torch
from PIL import Image


def question_inputs(processor, question: str, png: bytes) -> dict:
    """Processor inputs for one question on one PNG image, through the chat template."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True,
    )
    return processor(images=Image.open(io.BytesIO(png)).convert("RGB"), text=prompt, return_tensors="pt")


@torch.no_grad()
def greedy_answer(model, processor, question: str, png: bytes, max_new_tokens: int = 8) -> str:
    """The model's greedy answer to one question on one PNG image, special tokens and outer spaces removed."""
    inputs = question_inputs(processor, question, png)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True).strip()
