"""The one exception type for user mistakes.

Anything a user can get wrong (an unknown name, a missing file, an array of the wrong shape, a corrupt
checkpoint, NaN in data) raises :class:`UserError` with a one-line message that says what to do. The CLI
prints that line and exits non-zero, without a traceback; the Python API lets it propagate.
"""


class UserError(Exception):
    """A mistake in the input: the message is one line, meant for a person, and says how to fix it."""


def check_range(name: str, value, low: float = float("-inf"), high: float = float("inf"), *,
                open_low: bool = False) -> float:
    """``value`` as a float in [low, high] (``open_low``: (low, high]); else a :class:`UserError` naming ``name``.

    NaN is always refused; ±inf only where the bound on that side is itself infinite; so are strings and bools
    (a config file's ``"lr": "0.1"`` or ``true`` is a mistake, not a number).
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
    """``value`` as an int ≥ ``low``; a fractional number, a bool or a string is refused (not truncated)."""
    try:
        f = None if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError):
        f = None
    if f is None or not f.is_integer() or f < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(f)
