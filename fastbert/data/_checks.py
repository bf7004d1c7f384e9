"""Argument checks shared by fastbert.data: TypeError for a wrong type, ValueError for a wrong value, both
naming the argument."""
from __future__ import annotations

import numbers


MAX_THREADS = 1024  # num_threads above this is a mistake, not a machine
MAX_PAD_MULTIPLE = 1 << 16  # pad_to_multiple_of: a tile size, never more than a sequence could be


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_layout(pad_to_multiple_of, packed: bool, num_threads) -> tuple[int | None, int]:
    """(pad_to_multiple_of, num_threads) of a collation, checked: the padding multiple applies to the padded layout
    only and stays a tile size; num_threads >= 0 (0 = all cores) and at most MAX_THREADS."""
    if packed and pad_to_multiple_of:
        raise ValueError("pad_to_multiple_of applies to the padded layout only; packed=True has no padding")
    return (check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1, maximum=MAX_PAD_MULTIPLE, allow_none=True),
            check_int("num_threads", num_threads, minimum=0, maximum=MAX_THREADS))


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_split(split) -> tuple[float, float, float]:
    try:
        parts = tuple(split)
    except TypeError:
        raise TypeError(f"split must be a (mask, random, keep) triple of floats, got {type(split).__name__}") from None
    if len(parts) != 3:
        raise ValueError(f"split must have 3 entries (mask, random, keep), got {len(parts)}")
    parts = tuple(check_probability(f"split[{i}]", p) for i, p in enumerate(parts))
    if abs(sum(parts) - 1.0) > 1e-6:
        raise ValueError(f"split (mask, random, keep) must sum to 1, got {parts} (sum {sum(parts)})")
    return parts
