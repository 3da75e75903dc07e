"""The one exception type for user mistakes.

Anything a user can get wrong (an unknown name, a missing file, an array of the wrong shape, a corrupt
checkpoint, NaN in data) raises :class:`UserError` with a one-line message that says what to do. The CLI
prints that line and exits non-zero, without a traceback; the Python API lets it propagate.
"""

import operator


class UserError(Exception):
    """A mistake in the input: the message is one line, meant for a person, and says how to fix it."""


def check_range(name: str, value, low: float = float("-inf"), high: float = float("inf"), *,
                open_low: bool = False) -> float:
    """``value`` as a float in [low, high] (``open_low``: (low, high]); else a :class:`UserError` naming ``name``.

    NaN is always refused, ±inf wherever the bound on that side is finite, and strings and bools always (a config
    file's ``"lr": "0.1"`` or ``true`` is a mistake, not a number).
    """
    try:
        if isinstance(value, (str, bool)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    below = v <= low if open_low else v < low
    if v != v or below or v > high:
        raise UserError(f"{name} must be in {'(' if open_low else '['}{low:g}, {high:g}], got {value!r}")
    return v


def check_count(name: str, value, low: int = 0) -> int:
    """``value`` as an int ≥ ``low``; a fractional number, a bool or a string is refused (not truncated). Integers
    (Python's, numpy's, 0-d integer tensors) are taken exactly; a float only when it is a whole number."""
    n = None
    if not isinstance(value, (bool, str)):
        try:
            n = operator.index(value)  # exact, however large
        except TypeError:
            try:
                f = float(value)
                n = int(f) if f.is_integer() else None
            except (TypeError, ValueError, OverflowError):
                n = None
    if n is None or n < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    return n


def check_flag(name: str, value) -> bool:
    """``value`` as a bool; anything else (``"false"``, 0, None) is refused rather than read as true or false."""
    if not isinstance(value, bool):
        raise UserError(f"{name} must be True or False, got {value!r}")
    return value
