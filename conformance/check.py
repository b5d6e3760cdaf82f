"""What a check is, what it concludes, and the evidence it leaves behind.

A check is a plain function `run(ctx) -> None` wrapped with its name, category and level. It signals its
verdict by returning (pass) or raising `CheckFailed` (with evidence) or `Skip` (cannot judge here, e.g.
the model stopped before the point the check needs). Anything else it raises, such as a timeout, is an
error: the contract could not be verified.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

CATEGORIES = ("schema", "semantics", "streaming", "errors", "structured-output", "tools", "extensions",
              "responses")
LEVELS = ("MUST", "SHOULD", "EXT")     # MUST: the OpenAI contract; SHOULD: widely expected; EXT: extensions
OUTCOMES = ("passed", "failed", "skipped", "error")


@dataclass(frozen=True)
class Evidence:
    """One request and the part of its response that shows the failure."""
    request: dict                      # {"method", "url", "body"} as sent (long strings shortened)
    status: int | None                 # HTTP status, None when no response arrived
    excerpt: Any                       # the offending part: a field, a chunk, a body, a list of them
    note: str = ""                     # what is wrong with the excerpt


class CheckFailed(Exception):
    def __init__(self, message: str, evidence: tuple[Evidence, ...] = ()):
        super().__init__(message)
        self.message = message
        self.evidence = evidence


class Skip(Exception):
    """The check cannot reach a verdict against this server or model (not a failure)."""


@dataclass(frozen=True)
class Check:
    name: str                          # "category.what_is_checked", unique
    category: str
    level: str
    description: str                   # the rule, one sentence
    run: Callable[[Any], None]

    def __post_init__(self):
        assert self.category in CATEGORIES, self.category
        assert self.level in LEVELS, self.level


@dataclass(frozen=True)
class Result:
    name: str
    category: str
    level: str
    description: str
    outcome: str                       # one of OUTCOMES
    message: str = ""
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    seconds: float = 0.0


def check(category: str, level: str, name: str, description: str):
    """Decorator: turn `def fn(ctx)` into a `Check` named "<category-module>.<name>"."""
    def wrap(fn: Callable[[Any], None]) -> Check:
        return Check(f"{category}.{name}", category, level, description, fn)
    return wrap


def require(condition: bool, message: str, *evidence: Evidence) -> None:
    """Fail the running check with `message` and `evidence` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message, tuple(evidence))


def is_failure(result: Result) -> bool:
    return result.outcome in ("failed", "error")
