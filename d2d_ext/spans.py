"""The values a number setting may take, checked where the settings are made.

A :class:`Span` per setting (:data:`d2d_ext.annotate.SETTING_SPANS`,
``DiffusionParams.CENTRES``, the ``span`` of a :class:`~d2d_ext.bilevel.config.TrainConfig`
field's metadata, the commands' own number options in :mod:`d2d_ext.cli`): a value outside it
would otherwise fail deep inside the work (a window inside its own band, a crop of no pixels) or
be taken without meaning anything (a fraction above 1, negative steps), so it is refused naming
the setting.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Span", "finite_number", "whole_number"]


def finite_number(text: str) -> float:
    """A float read from ``text`` that must be finite (``ValueError`` otherwise)."""
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


def whole_number(text: str) -> int:
    """An int read from ``text`` (``ValueError`` naming it otherwise: ``2.5``, ``many``)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


class Span(NamedTuple):
    """From ``low`` to ``high`` (None: no bound), each end included unless ``open`` names it
    (``"low"``, ``"high"``, ``"both"``); ``whole`` for a count (pixels, steps, epochs). ``what``
    says what the number is, for the error."""

    low: float | None
    high: float | None = None
    whole: bool = False
    open: str = ""
    what: str = ""

    def checked(self, name: str, value, owner: str = ""):
        """``value`` as the setting's type (int for a count, float otherwise), or ``ValueError``
        ``"<owner><name> must be <what> <span>, got <value>"`` (``"must be ..."`` where ``name`` is
        empty: an option's reader, whose error names the option). A truth value, a word, NaN or
        an infinity is no number here."""
        number = not isinstance(value, bool) and isinstance(value, (int, np.integer) if self.whole else
                                                           (int, float, np.integer, np.floating))
        low_open, high_open = self._open_ends()
        ok = number and math.isfinite(value) and (
            self.low is None or (value > self.low if low_open else value >= self.low)) and (
            self.high is None or (value < self.high if high_open else value <= self.high))
        if not ok:
            subject = f"{owner}{name} " if owner or name else ""
            raise ValueError(f"{subject}must be {self.what + ' ' if self.what else ''}{self.describe()}, got {value!r}")
        return int(value) if self.whole else float(value)

    def parse(self, text: str, name: str = "", owner: str = ""):
        """``text`` read as the span's kind of number (:func:`whole_number` for a count, else
        :func:`finite_number`) and :meth:`checked`; ``ValueError`` naming what is wrong."""
        return self.checked(name, whole_number(text) if self.whole else finite_number(text), owner)

    def describe(self) -> str:
        """The span as text: ``>= 0``, ``> 0``, ``in [0, 1)``."""
        low_open, high_open = self._open_ends()
        if self.high is None:
            return f"{'>' if low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if high_open else '<='} {self.high:g}"
        return f"in {'(' if low_open else '['}{self.low:g}, {self.high:g}{')' if high_open else ']'}"

    def _open_ends(self) -> tuple:
        """``(low end open, high end open)``."""
        return self.open in ("low", "both"), self.open in ("high", "both")
