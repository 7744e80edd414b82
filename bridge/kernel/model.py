"""Shared pydantic building blocks for config models: strict base class and durations.

Every config model derives from :class:`StrictModel` (unknown keys are errors, models
are frozen once parsed). Durations accept ``250ms``, ``5s``, ``2m``, ``1h``, ``1d`` or
a plain number of seconds, and become ``float`` seconds.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"5s"`` -> 5.0; numbers are seconds. Raises ``ValueError`` with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 2m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError("expected a duration such as 500ms, 5s, 2m, 1h")


Duration = Annotated[float, BeforeValidator(parse_duration)]

#: Shortest poll interval a source accepts: a shorter one polls in a busy loop.
MIN_POLL_S = 0.05


def _poll_floor(value: float) -> float:
    if value < MIN_POLL_S:
        raise ValueError(f"must be at least {MIN_POLL_S * 1000:.0f}ms (a shorter interval "
                         "polls in a busy loop)")
    return value


#: A :data:`Duration` of at least :data:`MIN_POLL_S`, for the sources' poll intervals.
PollInterval = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_poll_floor)]


class StrictModel(BaseModel):
    """Config model base: unknown keys rejected, immutable after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
