"""The one training loop of the distiller and the recoverer: make a student match a teacher on real text.

The loss is the KL divergence between the teacher's and the student's next-token distributions, both
softened by ``temperature`` (and scaled by temperature², so gradients keep their size, as in Hinton et
al.), plus, where the widths match, the mean squared error between chosen hidden states, normalised by
the teacher's mean square so that layers with large activations do not dominate. Without a teacher the
loss is the ordinary next-token cross-entropy on the data.

AdamW, a short linear warm-up then cosine decay to a tenth of the rate, gradients clipped at norm 1.
Only the parameters passed are trained; everything is seeded (batch order, dropout), so the same seed on
the same machine gives the same weights.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from smashlib.progress import progress


@dataclass
class TrainingLog:
    """What a run did: the loss of every step, its wall time, and (step, value) of each evaluation."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    evaluations: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingOptions:
    steps: int
    learning_rate: float
    temperature: float = 1.0
    seed: int = 0
    #: weight of the hidden-state term; 0 (or no pairs) leaves only the logits' KL
    hidden_weight: float = 0.0
    #: (student hidden-state index, teacher hidden-state index), as in ``output_hidden_states``
    hidden_pairs: tuple[tuple[int, int], ...] = ()
    max_grad_norm: float = 1.0


@dataclass
class _Watcher:
    evaluate: Callable[[nn.Module], float]
    every: int
    logs: list[TrainingLog]


_WATCHERS: list[_Watcher] = []


@contextlib.contextmanager
def watch_training(evaluate: Callable[[nn.Module], float], every: int) -> Iterator[list[TrainingLog]]:
    """Within the block, every run of :func:`train_to_match` also calls ``evaluate(student)`` every ``every``
    steps (and before the first) and its log is appended to the yielded list: how a benchmark records the
    curve of a held-out metric against steps through smash(), without a hyperparameter for it."""
    watcher = _Watcher(evaluate, every, [])
    _WATCHERS.append(watcher)
    try:
        yield watcher.logs
    finally:
        _WATCHERS.remove(watcher)


def logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per token on temperature-softened distributions, times temperature²."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])  # padded vocabularies may differ
    student = nn.functional.log_softmax(student_logits[..., :vocab].float().flatten(0, -2) / temperature, dim=-1)
    teacher = nn.functional.log_softmax(teacher_logits[..., :vocab].float().flatten(0, -2) / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def language_model_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy. A decoder-only model's logit t predicts token t + 1; an encoder-decoder's,
    fed the text shifted right as decoder inputs, predicts token t itself."""
    input_ids = batch["input_ids"]
    if "decoder_input_ids" in batch:
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), input_ids.flatten())
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def hidden_loss(student_states, teacher_states, pairs) -> torch.Tensor:
    total = 0.0
    for student_index, teacher_index in pairs:
        target = teacher_states[teacher_index].float()
        error = (student_states[student_index].float() - target).pow(2).mean()
        total = total + error / target.pow(2).mean().clamp_min(1e-6)
    return total / max(len(pairs), 1)


def _learning_rate(step: int, options: TrainingOptions) -> float:
    warmup = max(1, min(20, options.steps // 10))
    if step < warmup:
        return options.learning_rate * (step + 1) / warmup
    progress_made = (step - warmup) / max(1, options.steps - warmup)
    return options.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_made)))


def train_to_match(
    student: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    options: TrainingOptions,
    parameters: Sequence[nn.Parameter],
    teacher: nn.Module | None = None,
    *,
    desc: str = "training",
    verbose: bool = True,
    evaluate: Callable[[nn.Module], float] | None = None,
    evaluate_every: int = 0,
) -> TrainingLog:
    """Train ``parameters`` of ``student`` for ``options.steps`` steps on ``batches`` (cycled, reshuffled
    each pass) to match ``teacher`` (or the data's next tokens when ``teacher`` is None).

    ``evaluate(student)``, when given, is called before the first step and every ``evaluate_every`` steps
    (in eval mode, without gradients) and its values are logged: that is how a loss curve against a held-out
    metric is recorded.
    """
    if not batches:
        raise ValueError("train_to_match needs at least one batch")
    log = TrainingLog()
    if evaluate is None and _WATCHERS:
        evaluate, evaluate_every = _WATCHERS[-1].evaluate, _WATCHERS[-1].every
        _WATCHERS[-1].logs.append(log)
    trainable = {id(p) for p in parameters}
    frozen = [p for p in student.parameters() if id(p) not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    torch.manual_seed(options.seed)
    order_generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=0.0)
    wants_hidden = options.hidden_weight > 0 and bool(options.hidden_pairs)
    if teacher is not None:
        teacher.eval()
    started = time.perf_counter()
    order: list[int] = []

    def run_evaluation(step: int) -> None:
        student.eval()
        with torch.no_grad():
            log.evaluations.append((step, float(evaluate(student))))
        student.train()

    student.train()
    try:
        if evaluate is not None:
            run_evaluation(0)
        bar = progress(range(options.steps), desc=desc, disable=not verbose)
        for step in bar:
            if not order:
                order = torch.randperm(len(batches), generator=order_generator).tolist()
            batch = batches[order.pop()]
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, options)
            out = student(**batch, output_hidden_states=wants_hidden)
            if teacher is None:
                loss = language_model_loss(out.logits, batch)
            else:
                with torch.no_grad():
                    reference = teacher(**batch, output_hidden_states=wants_hidden)
                loss = logit_loss(out.logits, reference.logits, options.temperature)
                if wants_hidden:
                    loss = loss + options.hidden_weight * hidden_loss(
                        out.hidden_states, reference.hidden_states, options.hidden_pairs
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
            optimizer.step()
            log.losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{log.losses[-1]:.4f}")
            if evaluate is not None and evaluate_every and (step + 1) % evaluate_every == 0:
                run_evaluation(step + 1)
    finally:
        student.eval()
        for p in parameters:
            p.grad = None
        for p in frozen:
            p.requires_grad_(True)
    log.seconds = time.perf_counter() - started
    return log
