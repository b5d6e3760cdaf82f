"""Reports of a run: a terminal table, a JSON document, and one self-contained HTML page."""
from __future__ import annotations

import html
import json
import shutil
from collections import Counter
from dataclasses import asdict

from .check import CATEGORIES, LEVELS, OUTCOMES, Result

MARKS = {"passed": "PASS", "failed": "FAIL", "skipped": "skip", "error": "ERR "}


def summary(results: list[Result]) -> dict[str, dict[str, int]]:
    """Counts of outcomes per category, plus a "total" row."""
    rows = {category: Counter() for category in CATEGORIES}
    for result in results:
        rows[result.category][result.outcome] += 1
        rows[result.category][f"{result.level}_{result.outcome}"] += 1
    rows = {category: counts for category, counts in rows.items() if counts}
    rows["total"] = sum(rows.values(), Counter())
    return {category: {outcome: counts.get(outcome, 0) for outcome in OUTCOMES}
            | {"must_failed": counts.get("MUST_failed", 0) + counts.get("MUST_error", 0)}
            for category, counts in rows.items()}


def render_table(results: list[Result], width: int | None = None) -> str:
    """One line per check, then the per-category summary; notes are cut to the terminal's width."""
    width = width or max(100, shutil.get_terminal_size((120, 24)).columns)
    name_width = max([len(r.name) for r in results] + [10])
    lines = [f"{'':4}  {'level':6} {'check':{name_width}}  note"]
    for r in results:
        note = r.message.replace("\n", " ")
        room = max(20, width - name_width - 15)
        lines.append(f"{MARKS[r.outcome]}  {r.level:6} {r.name:{name_width}}  "
                     f"{note[:room] + ('…' if len(note) > room else '')}")
    lines.append("")
    lines.append(f"{'category':18} {'passed':>7} {'failed':>7} {'skipped':>8} {'error':>6} {'MUST failed':>12}")
    for category, counts in summary(results).items():
        lines.append(f"{category:18} {counts['passed']:7} {counts['failed']:7} {counts['skipped']:8} "
                     f"{counts['error']:6} {counts['must_failed']:12}")
    return "\n".join(lines)


def to_json(results: list[Result], meta: dict) -> dict:
    return {"meta": meta, "summary": summary(results), "results": [asdict(r) for r in results]}


def _pretty(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}.passed{color:#17702a}.failed,.error{color:#b00020;font-weight:bold}.skipped{color:#777}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;max-height:30em;white-space:pre-wrap;word-break:break-all}
details{margin:.4em 0 1em 0}.lvl{font-size:.8em;padding:.1em .4em;border-radius:.3em;background:#eee}
.MUST{background:#fdd}.SHOULD{background:#ffe9b3}.EXT{background:#dde8ff}
"""


def render_html(results: list[Result], meta: dict) -> str:
    """A single page with no external resources: summary, all checks, and every failure's evidence."""
    esc = html.escape
    counts = summary(results)
    head_rows = "".join(
        f"<tr><th>{esc(category)}</th>" + "".join(f"<td class='{o}'>{row[o]}</td>" for o in OUTCOMES)
        + f"<td class='{'failed' if row['must_failed'] else 'passed'}'>{row['must_failed']}</td></tr>"
        for category, row in counts.items())
    check_rows = "".join(
        f"<tr><td class='{r.outcome}'>{MARKS[r.outcome]}</td><td><span class='lvl {r.level}'>{r.level}</span></td>"
        f"<td><a href='#{esc(r.name)}'>{esc(r.name)}</a></td><td>{esc(r.description)}</td>"
        f"<td>{esc(r.message)}</td></tr>" for r in results)
    failures = []
    for r in results:
        if r.outcome not in ("failed", "error"):
            continue
        evidence = "".join(
            f"<details open><summary>evidence {i + 1}: {esc(e.request.get('method', ''))} "
            f"{esc(e.request.get('url', ''))} → {esc(str(e.status))}</summary>"
            + (f"<p><b>{esc(e.note)}</b></p>" if e.note else "")
            + f"<p>response (offending part)</p><pre>{esc(_pretty(e.excerpt))}</pre>"
            f"<details><summary>request body</summary><pre>{esc(_pretty(e.request.get('body')))}</pre>"
            "</details></details>"
            for i, e in enumerate(r.evidence))
        failures.append(f"<h3 id='{esc(r.name)}'><span class='lvl {r.level}'>{r.level}</span> {esc(r.name)}</h3>"
                        f"<p>{esc(r.description)}</p><p class='{r.outcome}'>{esc(r.message)}</p>{evidence}")
    meta_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in meta.items())
    levels = " · ".join(f"<span class='lvl {level}'>{level}</span>" for level in LEVELS)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OpenAI conformance report</title>
<style>{STYLE}</style></head><body>
<h1>OpenAI API conformance report</h1>
<table>{meta_rows}</table>
<h2>Summary per category</h2>
<table><tr><th>category</th>{''.join(f'<th>{o}</th>' for o in OUTCOMES)}<th>MUST failed</th></tr>{head_rows}</table>
<p>Levels: {levels} — MUST is the OpenAI contract (a failure makes the run fail), SHOULD is widely
expected behaviour, EXT covers extension fields.</p>
<h2>Failures ({sum(1 for r in results if r.outcome in ('failed', 'error'))})</h2>
{''.join(failures) or '<p>None.</p>'}
<h2>All checks</h2>
<table><tr><th></th><th>level</th><th>check</th><th>rule</th><th>note</th></tr>{check_rows}</table>
</body></html>
"""
