"""Exact expressions for JSON numbers within bounds (JSON Schema minimum / maximum / exclusive*).

Unbounded numbers use the full JSON number syntax. A bounded number is written in plain decimal notation
(no exponent: every bounded value has one) and the expression accepts exactly the decimals in the range —
integer part by digit-wise range splitting, fraction part by digit-wise comparison with the bound's
fraction (trailing zeros allowed: "1.50" is 1.5).
"""
from __future__ import annotations

from decimal import Decimal

from .expr import EMPTY, NOTHING, alt, char_set, lit, opt, repeat, seq, star

DIGIT = char_set([(0x30, 0x39)])
NONZERO = char_set([(0x31, 0x39)])
INTEGER = seq(opt(lit("-")), alt(lit("0"), seq(NONZERO, star(DIGIT))))
FRACTION = seq(lit("."), repeat(DIGIT, 1, None))
EXPONENT = seq(char_set([(0x45, 0x45), (0x65, 0x65)]), opt(char_set([(0x2B, 0x2B), (0x2D, 0x2D)])),
               repeat(DIGIT, 1, None))
NUMBER = seq(INTEGER, opt(FRACTION), opt(EXPONENT))
# every spelling of an integer value ("3", "3.00", "3e0", "0.3e1"), and other exponent forms too: what a
# number that is not an integer must not look like (over-removing only loses non-integers written with e)
MAYBE_INTEGRAL = alt(seq(INTEGER, opt(seq(lit("."), repeat(lit("0"), 1, None)))), seq(INTEGER, opt(FRACTION), EXPONENT))


def digit_range(lo: int, hi: int):
    return char_set([(0x30 + lo, 0x30 + hi)]) if lo <= hi else NOTHING


def _fixed_width(lo: str, hi: str):
    """Digit strings of len(lo) == len(hi) between lo and hi (inclusive)."""
    if not lo:
        return EMPTY
    if lo[0] == hi[0]:
        return seq(lit(lo[0]), _fixed_width(lo[1:], hi[1:]))
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return seq(digit_range(int(lo[0]), int(hi[0])), repeat(DIGIT, rest, rest))
    return alt(seq(lit(lo[0]), _fixed_width(lo[1:], "9" * rest)),
               seq(digit_range(int(lo[0]) + 1, int(hi[0]) - 1), repeat(DIGIT, rest, rest)),
               seq(lit(hi[0]), _fixed_width("0" * rest, hi[1:])))


def natural_range(lo: int, hi: int | None):
    """Non-negative integers lo..hi (hi None: unbounded), without leading zeros."""
    lo = max(lo, 0)
    if hi is not None and hi < lo:
        return NOTHING
    branches = []
    if lo == 0:
        branches.append(lit("0"))
        lo = 1
        if hi == 0:
            return branches[0]
    width = len(str(lo))
    top = len(str(hi)) if hi is not None else width
    for w in range(width, top + 1):
        a = max(lo, 10 ** (w - 1))
        b = 10 ** w - 1 if hi is None else min(hi, 10 ** w - 1)
        if a <= b:
            branches.append(_fixed_width(str(a), str(b)))
    if hi is None:                                   # every longer number
        branches.append(seq(NONZERO, repeat(DIGIT, top, None)))
    return alt(*branches)


def integer_range(lo: int | None, hi: int | None):
    """Integers lo..hi (None: unbounded on that side); "-0" is not produced."""
    branches = []
    if hi is None or hi >= 0:
        branches.append(natural_range(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        neg_lo = max(-hi, 1) if hi is not None else 1
        neg_hi = -lo if lo is not None else None
        if neg_hi is None or neg_lo <= neg_hi:
            branches.append(seq(lit("-"), natural_range(neg_lo, neg_hi)))
    return alt(*branches) if branches else NOTHING


# --- decimals --------------------------------------------------------------------------------------------
# A fraction is the digit string t after the point ("" when there is none); its value is 0.t.
# Helpers return (expr of the non-empty digit strings, whether "" is included).

def _frac_eq(s: str):
    """Digit strings t with 0.t == 0.s: s followed by zeros ("" too when s is "")."""
    if not s:
        return repeat(lit("0"), 1, None), True
    return seq(lit(s), star(lit("0"))), False


def _frac_gt(s: str):
    """Digit strings t with 0.t > 0.s (s has no trailing zeros)."""
    if not s:
        return seq(star(lit("0")), NONZERO, star(DIGIT)), False
    head = int(s[0])
    tail, _ = _frac_gt(s[1:])
    return alt(seq(digit_range(head + 1, 9), star(DIGIT)), seq(lit(s[0]), tail)), False


def _frac_lt(s: str):
    """Digit strings t with 0.t < 0.s."""
    if not s:
        return NOTHING, False
    head = int(s[0])
    tail, tail_empty = _frac_lt(s[1:])
    rest = alt(tail, EMPTY) if tail_empty else tail
    return alt(seq(digit_range(0, head - 1), star(DIGIT)), seq(lit(s[0]), rest)), True


def _combine(*parts):
    exprs = [e for e, _ in parts]
    return alt(*exprs), any(empty for _, empty in parts)


def _frac_above(s: str, strict: bool):
    return _frac_gt(s) if strict else _combine(_frac_gt(s), _frac_eq(s))


def _frac_below(s: str, strict: bool):
    return _frac_lt(s) if strict else _combine(_frac_lt(s), _frac_eq(s))


def _frac_between(a: str, a_strict: bool, b: str, b_strict: bool):
    """Digit strings t with 0.a <(=) 0.t <(=) 0.b, for 0.a <= 0.b."""
    if a == b:
        return (NOTHING, False) if (a_strict or b_strict) else _frac_eq(a)
    a0 = int(a[0]) if a else 0
    b0 = int(b[0])
    if a0 == b0:
        inner, inner_empty = _frac_between(a[1:], a_strict, b[1:], b_strict)
        tail = alt(inner, EMPTY) if inner_empty else inner
        zero_ok = not a and not a_strict          # "" (value 0) is within [0, b)
        return seq(lit(str(a0)), tail), zero_ok
    low, low_empty = _frac_above(a[1:], a_strict)
    high, high_empty = _frac_below(b[1:], b_strict)
    low_branch = seq(lit(str(a0)), alt(low, EMPTY) if low_empty else low)
    high_branch = seq(lit(str(b0)), alt(high, EMPTY) if high_empty else high)
    zero_ok = not a and not a_strict
    return alt(low_branch, seq(digit_range(a0 + 1, b0 - 1), star(DIGIT)), high_branch), zero_ok


def _with_point(fraction):
    expr, empty_ok = fraction
    part = seq(lit("."), expr)
    return alt(part, EMPTY) if empty_ok else part


def _split(value: Decimal) -> tuple[int, str]:
    integer = int(value)
    fraction = format(value - integer, "f").partition(".")[2].rstrip("0")
    return integer, fraction


def nonnegative_range(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool):
    """Decimals x >= 0 with lo <(=) x <(=) hi (None: unbounded), plain notation."""
    if lo is None or lo < 0:
        lo, lo_strict = Decimal(0), False
    if hi is not None and (hi < lo or (hi == lo and (lo_strict or hi_strict))):
        return NOTHING
    lo_int, lo_frac = _split(lo)
    if hi is None:
        return alt(seq(lit(str(lo_int)), _with_point(_frac_above(lo_frac, lo_strict))),
                   seq(natural_range(lo_int + 1, None), opt(FRACTION)))
    hi_int, hi_frac = _split(hi)
    if lo_int == hi_int:
        return seq(lit(str(lo_int)), _with_point(_frac_between(lo_frac, lo_strict, hi_frac, hi_strict)))
    return alt(seq(lit(str(lo_int)), _with_point(_frac_above(lo_frac, lo_strict))),
               seq(natural_range(lo_int + 1, hi_int - 1), opt(FRACTION)),
               seq(lit(str(hi_int)), _with_point(_frac_below(hi_frac, hi_strict))))


def decimal_range(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool):
    """Decimals in the interval (bounds None: unbounded), plain notation, "-0…" only for negatives."""
    branches = []
    if hi is None or hi > 0 or (hi == 0 and not hi_strict):
        if lo is None or lo < 0:
            branches.append(nonnegative_range(Decimal(0), False, hi, hi_strict))
        else:
            branches.append(nonnegative_range(lo, lo_strict, hi, hi_strict))
    if lo is None or lo < 0:
        # x = -y, y > 0: y in (max(0, -hi), -lo)
        if hi is None or hi >= 0:
            y_lo, y_lo_strict = Decimal(0), True
        else:
            y_lo, y_lo_strict = -hi, hi_strict
        y_hi, y_hi_strict = (None, False) if lo is None else (-lo, lo_strict)
        branches.append(seq(lit("-"), nonnegative_range(y_lo, y_lo_strict, y_hi, y_hi_strict)))
    return alt(*branches) if branches else NOTHING
