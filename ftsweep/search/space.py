"""A search space from Hydra's sweep syntax, as hydra-optuna-sweeper reads it.

`interval(a, b)` is a float range (an int range where the config's value is an int),
`range(a, b[, step])` the values Hydra's range gives (b excluded), `choice(...)` or
`a,b,c` a categorical, and `tag(log, ...)` samples on a log scale. Anything else a
user writes is a fixed override that every trial gets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ftsweep.config.command_line import unreadable_override
from ftsweep.errors import FtsweepError


@dataclass
class SearchSpace:
    params: dict[str, BaseDistribution] = field(default_factory=dict)  # config key -> distribution
    adds: set[str] = field(default_factory=set)  # keys written `+key=...` (not in the config yet)
    fixed: list[str] = field(default_factory=list)  # overrides every trial gets as written

    def overrides(self, values: dict[str, object]) -> list[str]:
        """One trial's overrides: the fixed ones, then each sampled key with its value."""
        return [*self.fixed, *(f"{'+' if key in self.adds else ''}{key}={format_value(value)}"
                               for key, value in values.items())]


def parse(arguments: list[str], params: dict[str, str] | None, int_keys: set[str] = frozenset()) -> SearchSpace:
    """Command-line overrides plus the sweeper's `params` (the command line wins on a key).
    `int_keys`: keys whose config value is an int, so `interval` bounds there are integers."""
    parser = OverridesParser.create()
    space = SearchSpace()
    given = [f"{key}={value}" for key, value in (params or {}).items()]
    by_key: dict[str, Override] = {}
    for text in [*given, *arguments]:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise FtsweepError(unreadable_override(text, exc)) from None
        by_key[override.get_key_element().lstrip("+~")] = override
    for override in by_key.values():
        key = override.get_key_element()
        if override.is_sweep_override():
            if override.is_delete() or key.startswith("++"):
                raise FtsweepError(f"{override.input_line}: a searched key is set (key=...) or added (+key=...).")
            name = key.lstrip("+")
            space.params[name] = distribution(name, override, name in int_keys)
            if override.is_add():
                space.adds.add(name)
        else:
            space.fixed.append(override.input_line)
    if not space.params:
        raise FtsweepError("the search space is empty: give hydra.sweeper.params or overrides such as "
                           "'model.lr=tag(log, interval(1e-5, 1e-4))' (docs/sweeps-and-search.md).")
    return space


def distribution(key: str, override: Override, int_valued: bool = False) -> BaseDistribution:
    value = override.value()
    tags = set(getattr(value, "tags", set()))
    log = "log" in tags
    where = override.input_line or key
    if tags - {"log"}:
        raise FtsweepError(f"{where}: unknown tag {', '.join(sorted(tags - {'log'}))}; the one tag a search "
                           f"reads is log, as in tag(log, interval(1e-5, 1e-3)).")
    if isinstance(value, ChoiceSweep):
        if log:
            raise FtsweepError(f"{where}: tag(log, ...) needs an interval or a range, not a choice.")
        choices = list(value.list)
        if len(set(map(repr, choices))) != len(choices):
            raise FtsweepError(f"{where}: a choice lists a value twice.")
        if any(isinstance(c, (list, dict)) for c in choices):
            raise FtsweepError(f"{where}: choices must be single values (numbers, strings, null, booleans).")
        return CategoricalDistribution(choices)
    if isinstance(value, IntervalSweep):
        low, high = float(value.start), float(value.end)
        _check_bounds(where, low, high, log)
        if int_valued:
            if low != int(low) or high != int(high):
                raise FtsweepError(f"{where}: {key.lstrip('+')} is an integer; give integer bounds.")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(low, high, log=log)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0:
            raise FtsweepError(f"{where}: a range for a search needs a step > 0.")
        count = math.ceil((stop - start) / step)
        if count < 1:
            raise FtsweepError(f"{where}: the range is empty (range(a, b) stops before b; use a < b).")
        last = start + (count - 1) * step
        if all(isinstance(v, int) for v in (start, stop, step)):
            _check_bounds(where, start, last, log, allow_equal=True)
            if log and step != 1:
                raise FtsweepError(f"{where}: tag(log, range(...)) needs step 1 (Optuna samples log ranges by 1).")
            return IntDistribution(start, last, step=step, log=log)
        if log:
            raise FtsweepError(f"{where}: a float range with a step cannot be on a log scale; use "
                               f"tag(log, interval(a, b)).")
        _check_bounds(where, start, last, log, allow_equal=True)
        return FloatDistribution(float(start), float(round(last, 12)), step=float(step))
    raise FtsweepError(f"{where}: a search takes interval(...), range(...), choice(...) or a,b,c "
                       f"(optionally in tag(log, ...)); {type(value).__name__} is not one of them.")


def _check_bounds(where: str, low: float, high: float, log: bool, allow_equal: bool = False) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise FtsweepError(f"{where}: the bounds must be finite numbers.")
    if high < low or (high == low and not allow_equal):
        raise FtsweepError(f"{where}: the interval is empty; give (low, high) with low < high.")
    if log and low <= 0:
        raise FtsweepError(f"{where}: a log scale needs a lower bound > 0.")


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")  # read back by Hydra as this very string


def format_value(value: object) -> str:
    """A sampled value as Hydra override text (floats keep every digit; strings quoted when needed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    # Hydra's quoted string: a quote is escaped, and so are the backslashes right before one (or the end)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def bounds_and_choices(dist: BaseDistribution) -> list[object]:
    """The values a trial can never exceed, to check before any trial runs: ends and every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]
