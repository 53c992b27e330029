"""Range checks of guidance options, run when a guidance is configured, before any model loads: each
value out of its range is one ConfigError naming the key, the value, the range and an example. Numbers
and ``C()`` schedules (every value a schedule reaches is checked)."""
import math
from typing import Any, List, Optional, Tuple

from ..errors import ConfigError


def _plain(value: Any) -> Any:
    """A ListConfig (a schedule as configs give it) as a plain list; anything else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _shown(value: Any) -> str:
    """A config value as the user wrote it (a ListConfig schedule as a plain list)."""
    value = _plain(value)
    return repr(value) if isinstance(value, str) else str(value)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _range_text(low, high, low_open, high_open) -> str:
    low, high = (None if b is None else f"{b:g}" for b in (low, high))
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def _fix_text(key: str, example: Any) -> str:
    return f"set a value in range, e.g. {key}={example}" if example is not None else f"set {key} in range"


def check_range(
    key: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    why: str = "",
    example: Any = None,
) -> None:
    """One-line :class:`ConfigError` unless ``value`` is a (finite) number within the bounds."""
    allowed = ("an integer " if integer else "a number ") + _range_text(low, high, low_open, high_open)
    ok = is_number(value) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        why = f" ({why})" if why else ""
        raise ConfigError(f"{key}={_shown(value)} is out of range: it must be {allowed}{why}; {_fix_text(key, example)}.")


def schedule_nodes(key: str, value: Any) -> Tuple[Optional[str], List[Tuple[float, float]]]:
    """A number or ``C()`` schedule as ``(axis, [(position, value), ...])``: the piecewise-linear curve
    ``C()`` follows (clamped before the first and after the last node), on ``axis`` "step" (int end
    steps: ``global_step``), "epoch" (float end steps), "mixed", or None for a constant. Every value the
    schedule takes lies between its nodes' values. Raises a one-line ConfigError on a malformed one."""
    if is_number(value):
        return None, [(0.0, float(value))]
    items = _plain(value)
    fix = (
        f"{key} must be a number or a C() schedule [start_step, start_value, end_value, end_step] "
        "(also [start_value, end_value, end_step], or piecewise [s0, v0, v1, s1, v2, s2, ...]) with "
        "numbers and increasing steps"
    )
    if not isinstance(items, (list, tuple)) or not all(is_number(x) for x in items):
        raise ConfigError(f"{key}={_shown(value)} is not a number or a C() schedule: {fix}.")
    items = list(items)
    if len(items) == 3:
        items = [0] + items
    if len(items) == 4:
        nodes = [(items[0], items[1]), (items[3], items[2])]
        ends = [items[3]]
    elif len(items) >= 6 and len(items) % 2 == 0:
        # [s0, v0, v1, s1, v2, s2, ...]: segment i runs from (s_i, v_i) to (s_{i+1}, v_{i+1})
        nodes = [(items[0], items[1]), (items[3], items[2])] + [
            (items[i + 1], items[i]) for i in range(4, len(items), 2)
        ]
        ends = [items[i] for i in range(3, len(items), 2)]
    else:
        raise ConfigError(f"{key}={_shown(value)} has {len(items)} entries: {fix}.")
    steps = [p for p, _ in nodes]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        # C() divides by (end_step - start_step): equal steps crash the run at that step
        raise ConfigError(f"{key}={_shown(value)} has steps that do not increase ({steps}): {fix}.")
    kinds = {isinstance(e, int) for e in ends}
    axis = "mixed" if len(kinds) > 1 else ("step" if kinds == {True} else "epoch")
    return axis, [(float(p), float(v)) for p, v in nodes]


def schedule_values(key: str, value: Any) -> List[float]:
    """The values of a number or ``C()`` schedule's nodes (its extremes are among them)."""
    return [v for _, v in schedule_nodes(key, value)[1]]


def check_schedule_range(key: str, value: Any, low=None, high=None, **kwargs) -> None:
    """:func:`check_range` on a number, or on every value a ``C()`` schedule reaches."""
    if is_number(value):
        return check_range(key, value, low, high, **kwargs)
    low_open, high_open = kwargs.get("low_open", False), kwargs.get("high_open", False)
    for v in schedule_values(key, value):
        if not _within(v, low, high, low_open, high_open):
            why = f" ({kwargs['why']})" if kwargs.get("why") else ""
            raise ConfigError(
                f"{key}={_shown(value)} reaches {v:g}, out of range: every value of the schedule must be "
                f"{_range_text(low, high, low_open, high_open)}{why}; {_fix_text(key, kwargs.get('example'))}."
            )


def _within(v, low, high, low_open, high_open) -> bool:
    if low is not None and not (v > low if low_open else v >= low):
        return False
    return high is None or (v < high if high_open else v <= high)


def _curve_at(nodes: List[Tuple[float, float]], x: float) -> float:
    if x <= nodes[0][0]:
        return nodes[0][1]
    for (x0, y0), (x1, y1) in zip(nodes, nodes[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return nodes[-1][1]


def check_schedule_order(low_key: str, low_value: Any, high_key: str, high_value: Any) -> None:
    """``low <= high`` at every step. Two piecewise-linear curves on one axis: comparing them at every
    node of either is exact; on different axes (steps vs epochs) every low value must be <= every high one."""
    low_axis, low_nodes = schedule_nodes(low_key, low_value)
    high_axis, high_nodes = schedule_nodes(high_key, high_value)
    same_axis = None in (low_axis, high_axis) or (low_axis == high_axis and low_axis != "mixed")
    if same_axis:
        positions = sorted({p for p, _ in low_nodes + high_nodes})
        pairs = [(p, _curve_at(low_nodes, p), _curve_at(high_nodes, p)) for p in positions]
    else:
        pairs = [(None, max(v for _, v in low_nodes), min(v for _, v in high_nodes))]
    for where, lo, hi in pairs:
        if lo > hi + 1e-12:
            at = "" if (low_axis is None and high_axis is None) or where is None else f" at {low_axis or high_axis} {where:g}"
            raise ConfigError(
                f"{low_key}={_shown(low_value)} exceeds {high_key}={_shown(high_value)}{at} ({lo:g} > {hi:g}): "
                f"timesteps are drawn between them, so {low_key} must stay <= {high_key} at every step; "
                f"lower {low_key} or raise {high_key}."
            )
