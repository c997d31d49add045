"""The trainer's declared extension points: hooks contribute methods, the trainer calls them in a fixed order.

A hook mixin (or trainer) lists what it adds in ``fm_contributions``; contributions are collected over the MRO
(like ``fm_options``) and run in ``(order, method)`` order, so a trainer's behaviour does not depend on the order
in which its mixins are listed (tests/test_hook_order.py). The points:

- ``start``: ``method()`` after nnU-Net's ``on_train_start`` (``order`` sets the sequence);
- ``batch_size``: ``method(batch_size) -> batch_size`` after nnU-Net has set the batch size from the plans;
- ``train_step``: ``method(data, target) -> loss`` replaces the plain forward/backward when ``method_active()``
  is true; at most one may be active (chosen once, at the start of training);
- ``after_step``: ``method()`` after each optimiser step;
- ``unlabelled_cases``: ``method(keys) -> keys`` training cases without labels (kept out of few-shot choice);
- ``checkpoint``: ``method(checkpoint)`` adds entries to the checkpoint dict before its one write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnunet_fm.errors import UserInputError

POINTS = ("start", "batch_size", "train_step", "after_step", "unlabelled_cases", "checkpoint")


@dataclass(frozen=True)
class Contribution:
    """One method a hook adds at extension point ``point``; ``switch`` names the plans setting that turns a
    ``train_step`` strategy on (for the message when two are on)."""

    point: str
    method: str
    order: int = 0
    switch: str = ""

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ValueError(f"Contribution {self.method}: unknown point {self.point!r}; one of {POINTS}.")


def contributions(cls: type, point: str) -> list[Contribution]:
    """The contributions to ``point`` declared over the MRO of ``cls``, sorted by ``(order, method)``."""
    found = {c.method: c for klass in cls.__mro__ for c in vars(klass).get("fm_contributions", ()) if c.point == point}
    return sorted(found.values(), key=lambda c: (c.order, c.method))


class ExtensionPointsMixin:
    """Calls the ``start``, ``batch_size`` and ``train_step`` contributions at nnU-Net's matching methods."""

    fm_contributions: tuple[Contribution, ...] = ()

    def fm_contributed(self, point: str) -> list[Contribution]:
        """This trainer's contributions to ``point``, in call order."""
        return contributions(type(self), point)

    def fm_train_step_strategy(self) -> str | None:
        """The method replacing the plain forward/backward (None: the plain one); chosen once per trainer."""
        if "_fm_step_strategy" not in self.__dict__:
            active = [c for c in self.fm_contributed("train_step") if getattr(self, f"{c.method}_active")()]
            if len(active) > 1:
                switches = " and ".join(c.switch or c.method for c in active)
                raise UserInputError(
                    f"{self.configuration_name}: {switches} each replace the training step (a student and a "
                    "teacher pass per step, or the two-pass sub-cube step); only one can run. Turn one off with "
                    "--set, e.g. --set two_pass=false."
                )
            self._fm_step_strategy = active[0].method if active else None
        return self._fm_step_strategy

    def fm_run(self, point: str, *args: Any) -> None:
        """Call every contribution to ``point`` with ``args``."""
        for contribution in self.fm_contributed(point):
            getattr(self, contribution.method)(*args)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.fm_plans_batch_size = self.batch_size
        for contribution in self.fm_contributed("batch_size"):
            self.batch_size = getattr(self, contribution.method)(self.batch_size)

    def on_train_start(self):
        self.fm_train_step_strategy()  # refuse conflicting strategies before workers start
        super().on_train_start()
        self.fm_run("start")
