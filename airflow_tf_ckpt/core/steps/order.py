"""The one order of steps, and the one "newest ``.meta``" rule.

Every place that ranks steps (the selector, retention, quarantine) ranks them with
:func:`step_order`; discovery lists them in :func:`listing_order` (base name first, so the steps of
one base are adjacent and oldest first).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from airflow_tf_ckpt.core.formats.naming import META_SUFFIX, classify, parse_prefix

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.steps.discovery import CheckpointStep


def step_order(s: CheckpointStep) -> tuple[int, float, str]:
    """Oldest-to-newest order: step number, then timestamp, then name (no step sorts first)."""
    return (-1 if s.step is None else s.step, s.timestamp or 0.0, s.prefix)


def listing_order(s: CheckpointStep) -> tuple[str, int, str]:
    """Discovery's order: base name, then step number (no step first), then name."""
    return (s.base, -1 if s.step is None else s.step, s.prefix)


def newest_meta(names: Iterable[str], prefix: str, base: str, step: int | None) -> str | None:
    """The ``.meta`` that goes with step ``prefix``: its own, else the newest ``.meta`` of the same
    ``base`` at or before ``step`` (``write_meta_graph=False`` writes one only at the first save).

    ``None`` when there is none (or the step has no number and no ``.meta`` of its own).
    """
    names = names if isinstance(names, (set, dict, frozenset)) else set(names)
    own = prefix + META_SUFFIX
    if own in names:
        return own
    if step is None:
        return None
    best: tuple[int, str] | None = None
    for name in names:
        role = classify(name)
        if role is None or role.role != "meta":
            continue
        pn = parse_prefix(role.prefix)
        if pn.base != base or pn.step is None or pn.step > step:
            continue
        if best is None or pn.step > best[0]:
            best = (pn.step, name)
    return best[1] if best else None
