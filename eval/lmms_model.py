"""lmms-eval model plugin: a Hugging Face VLM (every family of sparsevlm.arch) with a pruning method attached.

CLI (lmms-eval's own, with this model registered; see eval.lmms_cli):
    python -m eval.lmms_cli --model sparsevlm \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=sparsevlm,budget=64 \
        --tasks pope --batch_size 1 --output_path out/
Python:
    lm = SparseVLMModel(pretrained="llava-hf/llava-1.5-7b-hf", method="sparsevlm", budget=64)
    simple_evaluate(model=lm, tasks=["pope"]); lm.efficiency_records  # one plain dict per evaluated request
"""

from __future__ import annotations

import ast
import json
import numbers
import time
from collections.abc import Callable
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics

import sparsevlm
from eval.config import ATTENTION, DTYPES, choice, integer
from eval.registry import METHODS, make_method
from eval.video import accepts_videos, read_frames, split_visuals
from sparsevlm import PruningMethod, SampleTrace
from sparsevlm.arch import FAMILIES, TowerWork, check_supported, tower_work
from sparsevlm.flops import full_flops, paper_flops, scored_rows
from sparsevlm.timing import GenerateTiming, timed_generate

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions. "
)
# "auto": the processor's chat template when it has one, else "llava". "vicuna_v1": LLaVA's own eval pipeline
# (`--conv-mode vicuna_v1`, what the SparseVLM authors ran), i.e. the system text before "USER:".
PROMPTS = {
    "llava": "USER: {images}{context} ASSISTANT:",
    "vicuna_v1": VICUNA_SYSTEM + "USER: {images}{context} ASSISTANT:",
}
PROMPT_STYLES = ("auto", *PROMPTS)


def manifests() -> list:
    """lmms-eval manifests that make `--model sparsevlm` resolve to SparseVLMModel (registered by eval.lmms_cli)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="sparsevlm", simple_class_path="eval.lmms_model.SparseVLMModel")]


def _none(value: Any) -> Any:
    """CLI strings 'none'/'null'/'' mean None."""
    return None if isinstance(value, str) and value.strip().lower() in ("none", "null", "") else value


def _option(value: Any) -> Any:
    """A method option from a `--model_args` string: '[2,6,15]' or '2;6;15' -> tuple, 'none' -> None, 'true' -> True."""
    value = _none(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, str) and value[:1] in "[(":
        return tuple(ast.literal_eval(value))
    if isinstance(value, str) and ";" in value:
        return tuple(ast.literal_eval(part) for part in value.split(";") if part)
    return value


def _int(value: Any) -> Any:
    """An integer given as a `--model_args` string ('64', ' 64 ') or any integral type (numpy's too) as an int;
    anything else unchanged, for the check to refuse ('1.5', '064', 1.5, True)."""
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            return value
        return number if str(number) == value.strip() else value
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _positive_int(name: str, value: Any) -> int:
    """A positive int from an int or its CLI string (eval.config.integer's check: ConfigError, a ValueError)."""
    return integer(name, _int(value), minimum=1)


def build_method(method: str | PruningMethod, budget: Any = None, version: Any = None, **options: Any) -> PruningMethod:
    """A pruning method from `--model_args` values (CLI strings or numbers); one-line ValueError on bad values."""
    if isinstance(method, PruningMethod):
        if budget is not None or version is not None or options:
            raise ValueError("method: pass budget/version/options inside the method object, not next to it")
        return method
    choice("method", method, tuple(sorted(METHODS)))
    budget = _none(budget)
    if budget is not None:
        budget = _positive_int("budget", budget)
    version = _none(version)
    if version is not None:
        if method != "sparsevlm":
            raise ValueError(f"version: only method=sparsevlm has versions (got method={method!r})")
        options["version"] = f"{float(version):.1f}" if isinstance(version, int | float) else str(version)
    try:
        return make_method(method, budget, **{key: _option(value) for key, value in options.items()})
    except TypeError as err:
        raise ValueError(f"method: {err}") from None


def _times(timing: GenerateTiming) -> dict[str, float | None]:
    """Milliseconds and MiB of one timed generate() (sparsevlm.timing: boundaries in docs/efficiency.md)."""
    per_token = timing.decode_per_token_s
    return {
        "prefill_ms": timing.prefill_s * 1000.0,
        "ttft_ms": timing.ttft_s * 1000.0,
        "e2e_ms": timing.e2e_s * 1000.0,
        "decode_ms_per_token": None if per_token is None else per_token * 1000.0,
        "kv_cache_mb": timing.kv_cache_bytes / 2**20,
        "peak_memory_mb": timing.peak_memory_bytes / 2**20,
    }


class SparseVLMModel(lmms):
    """A supported VLM (LLaVA-1.5, Video-LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL) evaluated with a visual-token
    pruning method attached."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        method: str | PruningMethod = "dense",
        budget: int | str | None = None,
        version: str | float | None = None,
        attn_implementation: str = "sdpa",
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        prompt: str = "auto",
        revision: str | None = None,
        max_batch_size: int | None = None,  # passed by the lmms-eval CLI; unused (no automatic batch sizing)
        model: torch.nn.Module | None = None,
        processor: Any = None,
        **method_options: Any,
    ) -> None:
        super().__init__()
        self.method = build_method(method, budget, version, **method_options)
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.prompt = choice("prompt", prompt, PROMPT_STYLES)
        self.efficiency_records: list[dict[str, Any]] = []
        # Set by the runner (eval.docguard.DocGuard): a request that fails even alone is recorded there and the rest
        # of the evaluation goes on; without a guard (plain lmms-eval CLI) such a failure stops the evaluation.
        self.doc_guard: Any = None
        self._stop_strings_ok: dict[tuple[str, ...], bool] = {}
        if model is not None:
            if processor is None:
                raise ValueError("processor: required when a built model is passed")
            self.model, self.processor = model, processor
            self.pretrained = pretrained or getattr(model.config, "_name_or_path", None)
        else:
            choice("attn_implementation", attn_implementation, ATTENTION)
            if _none(device) in (None, "auto"):
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if not (device in ("cpu", "cuda", "mps") or str(device).startswith("cuda:")):
                raise ValueError(f"device: got {device!r}, allowed: auto, cpu, cuda, cuda:N, mps")
            dtype = _none(dtype) or ("float32" if device == "cpu" else "float16")
            choice("dtype", dtype, DTYPES)
            if not _none(pretrained):
                raise ValueError("pretrained: missing; give a Hugging Face hub id or a local checkpoint directory")
            self.model, self.processor = self._load(str(pretrained), revision, dtype, attn_implementation, device)
            self.pretrained = str(pretrained)
        self.model.eval()
        self.tokenizer.padding_side = "left"  # the engine expects left-padded batches

    @classmethod
    def from_spec(cls, spec: Any, device: str) -> SparseVLMModel:
        """Build from the Hydra runner's validated RunSpec (eval.config.RunSpec) on a resolved device."""
        loading = {key: getattr(spec.model, key) for key in ("pretrained", "attn_implementation", "dtype", "revision")}
        return cls(method=spec.method, device=device, batch_size=spec.batch_size, **loading)

    @staticmethod
    def _load(pretrained: str, revision: str | None, dtype: str, attn: str, device: str) -> tuple[Any, Any]:
        """Model (the family's transformers class, sparsevlm.arch.FAMILIES) and processor from a hub id or a local
        directory."""
        import transformers

        config = transformers.AutoConfig.from_pretrained(pretrained, revision=revision)
        text_type = getattr(getattr(config, "text_config", None), "model_type", None)
        check_supported(config.model_type, text_type)
        model_class = getattr(transformers, FAMILIES[config.model_type].model_class)
        model = model_class.from_pretrained(
            pretrained, revision=revision, dtype=getattr(torch, dtype), attn_implementation=attn, device_map=device
        )
        return model, transformers.AutoProcessor.from_pretrained(pretrained, revision=revision)

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go."""
        return self.model.device

    @property
    def batch_size(self) -> int:
        """Requests per generate call."""
        return self.batch_size_per_gpu

    def clean(self) -> None:
        """Free cached accelerator memory but keep the model (lmms-eval's default deletes it after every run)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------------ prompts
    def build_prompt(self, context: str, n_images: int, n_videos: int = 0) -> str:
        """The prompt for one request: the chat template (style "auto") or a fixed LLaVA-1.5 layout (PROMPTS)."""
        if self.prompt == "auto" and getattr(self.processor, "chat_template", None):
            content = [{"type": "video"}] * n_videos + [{"type": "image"}] * n_images
            content.append({"type": "text", "text": context})
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        template = PROMPTS["llava" if self.prompt == "auto" else self.prompt]
        placeholders = "<video>" * n_videos + "<image>" * n_images
        return template.format(images=placeholders + ("\n" if placeholders else ""), context=context)

    def _visuals(self, doc_to_visual: Callable | None, task: str, split: str, doc_id: int) -> list:
        """The request's image or video (eval.video.VideoFrames: a path decoded to Video-LLaVA's 8 frames); one-line
        errors for what the engine cannot prune (several visuals, a video for an image-only processor)."""
        if doc_to_visual is None:
            return []
        visuals = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(f"{task}: {len(visuals)} visuals in one prompt; the engine prunes one per prompt")
        if visuals and isinstance(visuals[0], str):
            if not accepts_videos(self.processor):
                raise ValueError(f"{task}: a video needs a video model (Video-LLaVA); this processor takes images")
            return [read_frames(visuals[0])]
        return [v.convert("RGB") for v in visuals]

    def _inputs(self, prompts: list[str], images: list) -> dict[str, torch.Tensor]:
        """Left-padded processor inputs on the model's device, pixel values in the model's dtype."""
        images, videos = split_visuals(images)
        extra = {"videos": videos} if videos else {}  # only video processors take `videos`
        inputs = self.processor(images=images or None, text=prompts, return_tensors="pt", padding=True, **extra)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        for key in [k for k in inputs if k.startswith("pixel_values")]:  # images, Video-LLaVA's images and videos
            inputs[key] = inputs[key].to(self.model.dtype)
        return inputs

    # ------------------------------------------------------------------------------------------------ efficiency
    def _record(
        self,
        task: str,
        doc_id: int,
        sample: SampleTrace | None,
        prompt_tokens: int,
        output_tokens: int,
        times: dict[str, float | None],
        batch: int,
        tower: TowerWork | None = None,
    ) -> dict[str, Any]:
        """One per-request efficiency row, appended to self.efficiency_records.

        Times and memory belong to the whole batch the request ran in (exact per sample at batch_size=1); FLOPs are
        per sample, from its own trace (sparsevlm.flops: paper formula, and the full count with overheads).
        """
        row = {
            "task": task,
            "doc_id": doc_id,
            "method": self.method.name,
            "budget": getattr(self.method, "budget", None),
            "n_visual": sample.n_visual if sample else 0,
            "equivalent_tokens": sample.equivalent_tokens if sample else None,
            "equivalent_tokens_input": sample.equivalent_tokens_input if sample else None,
            "llm_input_tokens": sample.llm_input_tokens if sample else None,
            "prompt_tokens": sample.prompt_tokens if sample else prompt_tokens,
            "tokens_in": list(sample.tokens_in) if sample else None,
            "visual_out": list(sample.visual_out) if sample else None,
            "output_tokens": output_tokens,
            "tflops_paper": paper_flops(self.model.config, sample) / 1e12 if sample else None,
            "tflops_full": (
                full_flops(self.model.config, sample, scored_rows(self.method, sample), tower).total / 1e12
                if sample
                else None
            ),
            **times,
            "batch_size": batch,
        }
        self.efficiency_records.append(row)
        return row

    @staticmethod
    def _input_tokens(row: dict[str, Any]) -> int:
        """Text tokens plus the equivalent visual tokens (what the pruned model effectively reads)."""
        if row["equivalent_tokens"] is None:
            return row["prompt_tokens"]
        return row["prompt_tokens"] - row["n_visual"] + round(row["equivalent_tokens"])

    @staticmethod
    def _log(rows: list[dict[str, Any]], elapsed_s: float) -> None:
        """One lmms-eval log_metrics call per batch: shows up in results['throughput'] as avg_<key>."""
        generated = sum(r["output_tokens"] for r in rows)
        extra: dict[str, Any] = {"total_requests": len(rows), "batch_size": len(rows)}
        for key in ("equivalent_tokens", "equivalent_tokens_input", "llm_input_tokens", "prompt_tokens"):
            values = [r[key] for r in rows if r[key] is not None]
            if values:
                extra[key] = sum(values) / len(values)
        log_metrics(elapsed_s, generated, generated / elapsed_s if elapsed_s > 0 else 0.0, additional_metrics=extra)

    @staticmethod
    def _samples(trace: sparsevlm.PruneTrace, rows: int) -> list[SampleTrace | None]:
        """The trace entry of each batch row (beam search expands rows: take each request's first copy)."""
        per = len(trace.samples) // rows
        return [trace.samples[i * per] if per else None for i in range(rows)]

    # ------------------------------------------------------------------------------------------------ requests
    def generate_until(self, requests: list) -> list[GenerationResult]:
        """Batched generation, grouped by identical gen kwargs and image count; answers in request order."""
        return self._generate([r.args for r in requests])

    def _failed(self, task: str, doc_id: int, err: Exception) -> GenerationResult:
        """Record a request that failed on its own (or raise, when no guard collects failures)."""
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if self.doc_guard is None:
            raise RuntimeError(f"{task} doc {doc_id}: {reason}") from err
        self.doc_guard.record(task, doc_id, f"generation: {reason}")
        return GenerationResult(text="", token_counts=TokenCounts(input_tokens=0, output_tokens=0))

    def _generate_isolated(self, batch: list[tuple]) -> list[GenerationResult]:
        """Generate a batch; if it fails, each request alone, so that one bad request fails only itself."""
        try:
            return self._generate_batch(batch)
        except Exception as err:
            if len(batch) == 1:
                _, _, _, doc_id, task = batch[0]
                return [self._failed(task, doc_id, err)]
        return [result for item in batch for result in self._generate_isolated([item])]

    def _generate(self, args: list[tuple]) -> list[GenerationResult]:
        """Answers in request order: batches of requests with the same gen kwargs and image count, longest first."""
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs, *_) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs or {}, sort_keys=True, default=str), []).append(i)
        out: list[GenerationResult | None] = [None] * len(args)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(args[i][0]))  # similar lengths together: less padding
            for start in range(0, len(indices), self.batch_size):
                prepared: dict[int, list[tuple]] = {}  # images are loaded per batch, grouped by count
                for i in indices[start : start + self.batch_size]:
                    context, gen_kwargs, doc_to_visual, doc_id, task, split = args[i]
                    try:
                        images = self._visuals(doc_to_visual, task, split, doc_id)
                    except Exception as err:
                        out[i] = self._failed(task, doc_id, err)
                        continue
                    counts = tuple(map(len, split_visuals(images)))  # (images, videos): one batch holds one kind
                    item = (i, self.build_prompt(context, *counts), dict(gen_kwargs or {}), images, doc_id, task)
                    prepared.setdefault(counts, []).append(item)
                for batch in prepared.values():
                    for item, result in zip(batch, self._generate_isolated([b[1:] for b in batch]), strict=True):
                        out[item[0]] = result
        return out

    def _gen_config(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """HF generate() arguments and stop strings from one task's gen kwargs."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else [s for s in until if s]
        temperature = float(kwargs.get("temperature") or 0.0)
        do_sample = bool(kwargs.get("do_sample", False)) or temperature > 0
        config: dict[str, Any] = {
            "max_new_tokens": int(kwargs.get("max_new_tokens") or self.max_new_tokens),
            "do_sample": do_sample,
            "num_beams": int(kwargs.get("num_beams") or 1),
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            # a generated <image> token would be read as a new image after a filled cache, which the engine refuses
            "suppress_tokens": self._visual_token_ids(),
        }
        if do_sample:
            config["temperature"] = temperature or 1.0
            if kwargs.get("top_p") not in (None, 0):
                config["top_p"] = float(kwargs["top_p"])
        else:
            config.update(temperature=None, top_p=None, top_k=None)
        if until and self._supports_stop_strings(until):
            config.update(stop_strings=until, tokenizer=self.tokenizer)
        return config, until

    def _visual_token_ids(self) -> list[int]:
        """The model's image and video placeholder ids."""
        family = FAMILIES[self.model.config.model_type]
        return [getattr(self.model.config, name) for name in family.visual_token_fields]

    def _supports_stop_strings(self, until: list[str]) -> bool:
        """Whether HF can stop generation on these strings with this tokenizer (word-level vocabularies cannot).

        Without it, answers are still cut at the stop strings afterwards; generation just runs to EOS or the limit.
        """
        from transformers.generation.stopping_criteria import StopStringCriteria

        key = tuple(until)
        if key not in self._stop_strings_ok:
            try:
                StopStringCriteria(self.tokenizer, until)
                self._stop_strings_ok[key] = True
            except ValueError:
                self._stop_strings_ok[key] = False
        return self._stop_strings_ok[key]

    def _generate_batch(self, batch: list[tuple]) -> list[GenerationResult]:
        """One pruned, timed generate() over a batch; answers cut at the stop strings, one efficiency row each."""
        prompts = [p for p, _, _, _, _ in batch]
        images = [img for _, _, imgs, _, _ in batch for img in imgs]
        config, until = self._gen_config(batch[0][1])
        inputs = self._inputs(prompts, images)
        width = inputs["input_ids"].shape[1]
        towers = tower_work(self.model.config, inputs)
        timing, trace, generated = timed_generate(self.model, inputs, self.method, **config)
        elapsed = timing.e2e_s
        times = _times(timing)
        samples = self._samples(trace, len(batch))
        results, rows = [], []
        for row, (_, _, _, doc_id, task) in enumerate(batch):
            tokens = generated[row, width:].tolist()
            if self.tokenizer.eos_token_id in tokens:
                tokens = tokens[: tokens.index(self.tokenizer.eos_token_id) + 1]
            tokens = [t for t in tokens if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0]
            text = text.strip()
            prompt_tokens = int(inputs["attention_mask"][row].sum())
            record = self._record(
                task, doc_id, samples[row], prompt_tokens, len(tokens), times, len(batch), towers[row]
            )
            rows.append(record)
            counts = TokenCounts(input_tokens=self._input_tokens(record), output_tokens=len(tokens))
            results.append(GenerationResult(text=text, token_counts=counts))
            self.cache_hook.add_partial("generate_until", (prompts[row], batch[row][1]), text)
        self._log(rows, elapsed)
        return results

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probs after a pruned prefill, and whether greedy decoding would produce it."""
        out = []
        for args in [r.args for r in requests]:
            try:
                out.append(self._loglikelihood_one(*args))
            except Exception as err:
                self._failed(args[4], args[3], err)
                out.append((float("-inf"), False))
        return out

    def _loglikelihood_one(
        self, context: str, doc_to_target: Any, doc_to_visual: Any, doc_id: int, task: str, split: str
    ) -> tuple[float, bool]:
        """One loglikelihood request (see loglikelihood)."""
        doc = self.task_dict[task][split][doc_id]
        continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
        if isinstance(continuation, list):
            continuation = continuation[0]
        images = self._visuals(doc_to_visual, task, split, doc_id)
        prompt = self.build_prompt(context, *map(len, split_visuals(images)))
        full = prompt + (continuation if continuation[:1].isspace() else " " + continuation)
        n_prompt = self._inputs([prompt], images)["input_ids"].shape[1]
        inputs = self._inputs([full], images)
        n_cont = inputs["input_ids"].shape[1] - n_prompt
        if n_cont < 1:
            raise ValueError(f"{task}: doc {doc_id} has an empty continuation {continuation!r}")
        with sparsevlm.attach(self.model, self.method) as trace, torch.inference_mode():
            started = time.perf_counter()
            logits = self.model(**inputs).logits[0]  # pruning shortens the sequence; the text tail stays aligned
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
        logprobs = torch.log_softmax(logits[-n_cont - 1 : -1].float(), dim=-1)
        target = inputs["input_ids"][0, -n_cont:]
        total = float(logprobs.gather(1, target[:, None]).sum())
        greedy = bool((logprobs.argmax(dim=-1) == target).all())
        times = {"e2e_ms": elapsed * 1000.0}  # a single forward: no prefill/decode split
        (tower,) = tower_work(self.model.config, inputs)
        row = self._record(task, doc_id, self._samples(trace, 1)[0], inputs["input_ids"].shape[1], 0, times, 1, tower)
        self._log([row], elapsed)
        self.cache_hook.add_partial("loglikelihood", (context, continuation), (total, greedy))
        return total, greedy

    def generate_until_multi_round(self, requests: list) -> list[GenerationResult]:
        """First round only: generate_until on (context, gen_kwargs, doc_to_visual, doc_id, task, split).

        Later rounds would put text after a non-empty KV cache, which the engine does not prune; no task of
        this project is multi-round.
        """
        args = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, _doc_to_text_partial, doc_id, task, split = request.args
            args.append((context, gen_kwargs, doc_to_visual, doc_id, task, split))
        return self._generate(args)
