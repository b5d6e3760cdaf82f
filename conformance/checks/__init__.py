"""All checks, one module per category. The schema checks come last: they validate every body seen."""
from __future__ import annotations

from . import agent, errors, extensions, responses, schema, semantics, streaming, structured_output, tools

ALL_CHECKS = (semantics.CHECKS + streaming.CHECKS + errors.CHECKS + structured_output.CHECKS + tools.CHECKS
              + extensions.CHECKS + agent.CHECKS + responses.CHECKS + schema.CHECKS)


def select(categories: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> tuple:
    """The checks in the given categories and/or with the given names (all when both are empty)."""
    if not categories and not names:
        return ALL_CHECKS
    return tuple(c for c in ALL_CHECKS if c.category in categories or c.name in names)


assert len({c.name for c in ALL_CHECKS}) == len(ALL_CHECKS), "check names must be unique"
