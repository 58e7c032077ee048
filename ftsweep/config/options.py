"""One table per config group whose option picks an implementation (timm's optimizer registry, in
small): the option names and their words for the run description live here; the config checks take
their choice lists from it, and the model, the schedule and the run description implement exactly
these names (`implement` refuses a table with a name missing or extra, at import). Adding an option
is one entry here and one in each table that implements it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from omegaconf import DictConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """The options of one config key: name -> its words in a run's description (from its node).

    Args:
        key: the config key that picks one option, e.g. ``optimizer.name``.
        described: each option's name -> a function of the group's config node giving its words.

    Example:
        >>> HEADS_DEMO = Options("head.type", {"cls": lambda node: "the first token", "mean": lambda node: "the mean"})
        >>> HEADS_DEMO.names
        ('cls', 'mean')
        >>> pools = HEADS_DEMO.implement({"cls": "ClsPool", "mean": "MeanPool"})  # a missing name raises TypeError
        >>> HEADS_DEMO.unknown("max")
        "head.type='max' is unknown; use cls or mean."
    """

    key: str  # the key that picks one, e.g. optimizer.name
    described: Mapping[str, Callable[[DictConfig], str]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.described)

    def describe(self, node: DictConfig, name: str) -> str:
        return self.described[name](node)

    def unknown(self, name: object) -> str:
        """The one-line refusal of a name that is not an option."""
        *first, last = self.names
        return f"{self.key}={name!r} is unknown; use {', '.join(first)} or {last}."

    def implement(self, table: dict[str, T]) -> dict[str, T]:
        """`table` (name -> what implements it), checked to cover exactly these options."""
        if set(table) != set(self.names):
            raise TypeError(f"{self.key}: implemented {sorted(table)}, options are {sorted(self.names)}")
        return table


def _rates(values) -> str:
    return ", ".join(f"{rate:g}" for rate in values)


OPTIMIZERS = Options("optimizer.name", {
    "adamw": lambda opt: f"AdamW at one rate {opt.lr:g}",
    "llrd": lambda opt: (f"layer-wise LR decay: top layer {opt.lr:g}, x{opt.layer_decay:g} per layer down, "
                         f"head {opt.head_lr:g}"),
    "grouped_llrd": lambda opt: (f"grouped LLRD: {opt.n_groups} groups at {_rates(opt.group_lrs)}, "
                                 f"head {opt.head_lr:g}"),
})
SCHEDULERS = Options("scheduler.name", {  # the transformers get_scheduler shapes, after the warm-up
    "linear": lambda sched: "linear schedule",
    "cosine": lambda sched: "cosine schedule",
    "constant": lambda sched: "constant schedule",
})
HEADS = Options("head.type", {
    "pooler": lambda head: "the backbone's pooler (a fresh one where it has none)",
    "cls": lambda head: "the first token's hidden state",
    "mean": lambda head: "the mean over unpadded tokens",
    "attention": lambda head: f"attention pooling ({head.attention_hidden} hidden units), padding masked",
})
# trainer.compile: off, or a torch.compile mode (true = default); model/speed.py holds their arguments
COMPILE_CHOICES = (False, True, "default", "reduce-overhead")
