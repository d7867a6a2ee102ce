"""DynamicBatcher: a model's ``generate`` and forward pass served to many callers in padded batches.

Callers (threads, or one call with a list of prompts) each get their own result, in their order, as if
they had called the model alone: generation pads on the left and cuts each row after its first
end-of-sequence token (where an unbatched call stops), forward passes pad on the right and cut each
caller's rows and columns back out (see :mod:`smashlib.serving.padding`).

What cannot be batched faithfully runs alone, unbatched, under the same lock as the batches: calls
with settings other than the plain sampling/search ones (streamers, logits processors, returned scores,
caches passed in, ``inputs_embeds``), generation of encoder-decoder models, and forward calls with
more than ids and a mask or that want a cache back.
"""
from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from smashlib.errors import InvalidInputError
from smashlib.serving.batch_queue import BatchQueue
from smashlib.serving.padding import cut_after_eos, cut_output, left_pad, right_pad, stack_right
from smashlib.serving.requests import as_token_block, is_text, require_tokenizer, unpadded_rows

#: generate() settings that mean the same for every row of a batch, so rows with equal values share one.
BATCHABLE_GENERATE_SETTINGS = frozenset({
    "max_new_tokens", "min_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "repetition_penalty", "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping",
    "eos_token_id", "pad_token_id", "use_cache",
})
#: forward() keywords besides input_ids and attention_mask that a batch can honour for every caller.
BATCHABLE_FORWARD_SETTINGS = frozenset({"output_hidden_states", "output_attentions", "return_dict", "use_cache"})


def _frozen(settings: dict[str, Any]) -> Hashable:
    """A hashable key of plain settings (lists become tuples): equal keys can share a batch."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))


@dataclass(frozen=True)
class _GenerateKey:
    settings: Hashable
    max_new_tokens: int


class DynamicBatcher:
    """Collects ``generate`` and forward calls into batches of up to ``max_batch_size`` rows.

    A batch starts when full or when its oldest request has waited ``max_wait_ms``.
    ``tokenizer`` is needed only for text prompts (strings in, generated text out).
    """

    def __init__(self, model: torch.nn.Module, max_batch_size: int, max_wait_ms: float, tokenizer: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        #: held while the model runs (a batch, or a call that runs alone)
        self.lock = threading.Lock()
        self.generate_queue = BatchQueue(self._generate_batch, max_batch_size, max_wait_ms, "smashlib-generate")
        self.forward_queue = BatchQueue(self._forward_batch, max_batch_size, max_wait_ms, "smashlib-forward")

    def close(self) -> None:
        self.generate_queue.close()
        self.forward_queue.close()

    # ------------------------------------------------------------------ model facts
    @property
    def _config(self) -> Any:
        config = getattr(self.model, "config", None)
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    @property
    def _vocab_size(self) -> int | None:
        return getattr(self._config, "vocab_size", None)

    @property
    def _device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _eos_ids(self, settings: dict[str, Any]) -> list[int]:
        eos = settings.get("eos_token_id", getattr(getattr(self.model, "generation_config", None), "eos_token_id", None))
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def _pad_id(self, settings: dict[str, Any]) -> int:
        """The id generate fills finished rows with: pad_token_id, else the first end-of-sequence id, else 0."""
        if settings.get("pad_token_id") is not None:
            return int(settings["pad_token_id"])
        configured = getattr(getattr(self.model, "generation_config", None), "pad_token_id", None)
        if configured is None and self.tokenizer is not None:
            configured = getattr(self.tokenizer, "pad_token_id", None)
        if configured is not None:
            return int(configured)
        eos = self._eos_ids(settings)
        return eos[0] if eos else 0

    def _run_alone(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return function(*args, **kwargs)

    # ------------------------------------------------------------------ generate
    def generate(self, inputs: Any = None, **kwargs: Any) -> Any:
        """Like ``model.generate``; text prompts (a string or a list) return the generated text."""
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if is_text(inputs):
            return self._generate_text(inputs, kwargs)
        if (
            inputs is None
            or getattr(self._config, "is_encoder_decoder", False)
            or not set(kwargs) <= BATCHABLE_GENERATE_SETTINGS
        ):
            if inputs is not None:
                kwargs["input_ids"] = inputs
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            return self._run_alone(self.model.generate, **kwargs)
        ids, mask, _ = as_token_block(inputs, attention_mask, self._vocab_size)
        futures = self._submit_rows(unpadded_rows(ids, mask), kwargs)
        new_tokens = [future.result() for future in futures]
        filler = self._pad_id(kwargs)
        return torch.cat([ids, stack_right(new_tokens, filler)], dim=1).to(inputs.device if isinstance(
            inputs, torch.Tensor) else self._device)

    def _generate_text(self, prompts: str | Sequence[str], settings: dict[str, Any]) -> str | list[str]:
        tokenizer = require_tokenizer(self.tokenizer, "dynamic_batcher")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long) for text in texts]
        for text, row in zip(texts, rows):
            if len(row) == 0:
                raise InvalidInputError(f"the prompt {text!r} has no tokens: give at least one character.")
        futures = self._submit_rows(rows, settings)
        answers = [tokenizer.decode(future.result(), skip_special_tokens=True) for future in futures]
        return answers[0] if isinstance(prompts, str) else answers

    def _submit_rows(self, rows: list[torch.Tensor], settings: dict[str, Any]) -> list[Any]:
        """One queue item per row, checked here (in the caller's thread) so a bad row never reaches a batch."""
        settings = dict(settings)
        max_length = settings.pop("max_length", None)
        configured = getattr(self.model, "generation_config", None)
        entries = []
        for row in rows:
            if self._vocab_size is not None and (int(row.min()) < 0 or int(row.max()) >= self._vocab_size):
                raise InvalidInputError(
                    f"a prompt holds token ids up to {int(row.max())}, outside this model's vocabulary "
                    f"[0, {self._vocab_size - 1}]: were they made by another model's tokenizer?"
                )
            if "max_new_tokens" in settings:
                new = settings["max_new_tokens"]
            elif max_length is not None:
                new = max_length - len(row)
            elif getattr(configured, "max_new_tokens", None) is not None:
                new = configured.max_new_tokens
            else:  # generate's default: max_length counts the prompt, so each row's budget differs
                new = getattr(configured, "max_length", 20) - len(row)
            if new < 1:
                raise InvalidInputError(
                    f"a prompt of {len(row)} tokens leaves no room to generate (max_length {max_length or 'default'}): "
                    "pass max_new_tokens=N."
                )
            key = _GenerateKey(_frozen({k: v for k, v in settings.items() if k != "max_new_tokens"}), int(new))
            entries.append((key, row, 1))
        return self.generate_queue.submit_many(entries)

    def _generate_batch(self, key: _GenerateKey, rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        settings = dict(key.settings)
        pad_id = self._pad_id(settings)
        ids, mask = left_pad(rows, pad_id)
        settings["max_new_tokens"] = key.max_new_tokens
        settings.setdefault("pad_token_id", pad_id)
        with self.lock:
            output = self.model.generate(input_ids=ids.to(self._device), attention_mask=mask.to(self._device), **settings)
        new_tokens = output[:, ids.shape[1]:].cpu()
        eos = self._eos_ids(settings)
        return [cut_after_eos(new_tokens[index], eos) for index in range(len(rows))]

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Like calling the model; plain ids (+ mask) calls are batched, their outputs cut back per caller."""
        if len(args) == 1 and "input_ids" not in kwargs:
            kwargs["input_ids"] = args[0]
            args = ()
        if (
            args
            or kwargs.get("input_ids") is None
            or not set(kwargs) - {"input_ids", "attention_mask"} <= BATCHABLE_FORWARD_SETTINGS
            or kwargs.get("use_cache")  # the caller wants the cache back: a batch's cache is not theirs
            or (torch.is_grad_enabled() and self.model.training)
        ):
            return self._run_alone(self.model, *args, **kwargs)
        inputs = kwargs.pop("input_ids")
        ids, mask, _ = as_token_block(inputs, kwargs.pop("attention_mask", None), self._vocab_size)
        kwargs["use_cache"] = False
        future = self.forward_queue.submit(_frozen(kwargs), (ids, mask), rows=ids.shape[0])
        return future.result()

    def _forward_batch(self, key: Hashable, blocks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        ids, mask = right_pad(blocks, self._pad_id({}))
        with self.lock, torch.no_grad():
            output = self.model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device), **dict(key))
        results, start = [], 0
        for block_ids, _ in blocks:
            rows = slice(start, start + block_ids.shape[0])
            results.append(cut_output(output, rows, block_ids.shape[1]))
            start += block_ids.shape[0]
        return results
