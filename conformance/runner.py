"""Run checks one after another against one server and collect their results."""
from __future__ import annotations

import time
import traceback
from typing import Callable, Iterable

from .check import Check, CheckFailed, Result, Skip
from .client import TransportError
from .context import Context


def run_check(ctx: Context, item: Check) -> Result:
    started = time.monotonic()

    def result(outcome: str, message: str = "", evidence=()) -> Result:
        return Result(item.name, item.category, item.level, item.description, outcome, message,
                      tuple(evidence), round(time.monotonic() - started, 3))
    try:
        item.run(ctx)
    except CheckFailed as failure:
        return result("failed", failure.message, failure.evidence)
    except Skip as skip:
        return result("skipped", str(skip))
    except TransportError as exc:
        return result("error", f"no HTTP response: {exc}")
    except Exception as exc:  # a crash in a check is reported, never fatal to the run
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return result("error", f"check crashed: {type(exc).__name__}: {exc} "
                               f"({last.filename.rsplit('/', 1)[-1]}:{last.lineno})")
    return result("passed")


def run_checks(ctx: Context, checks: Iterable[Check],
               on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run `checks` in order (sequentially: servers under test are often single-threaded)."""
    results = []
    for item in checks:
        outcome = run_check(ctx, item)
        results.append(outcome)
        if on_result:
            on_result(outcome)
    return results


def must_failures(results: list[Result]) -> list[Result]:
    """MUST checks that failed or could not run: these make the exit status non-zero."""
    return [r for r in results if r.level == "MUST" and r.outcome in ("failed", "error")]
