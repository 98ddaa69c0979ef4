"""The soups folder's Table IV (results.md): every method's results.json there, from one set of ingredients.

A method folder holds one soup and its results.json (`ich_keras.soups.runner`); the table beside them is rebuilt from
those files whenever a command publishes a method, so it shows what is on disk, never a stopped command's rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ich_keras import atomic
from ich_keras.soups import publish, report
from ich_keras.soups.registry import METHODS


def write(output_dir: Path, fingerprint: str | None = None) -> str:
    """Table IV over the methods under `output_dir` cooked from one set of ingredients, written to
    output_dir/results.md (waiting for the folder's lock); returns it.

    Args:
        output_dir: the soups folder.
        fingerprint: the ingredient set to show (`ingredients_fingerprint` in results.json); default: that of the
            most recently written results.json.
    """
    with publish.locked(output_dir, wait=True):
        return write_held(Path(output_dir), fingerprint)


def method_results(output_dir: Path) -> list[dict]:
    """Every method folder's results.json, oldest first; a damaged one is a `UserError` naming it."""
    paths = [p for p in output_dir.glob("*/results.json") if p.parent.name in METHODS]
    found = [atomic.read_json(p) for p in sorted(paths, key=lambda p: p.stat().st_mtime_ns)]
    return [r for r in found if r.get("method") in METHODS]


def write_held(output_dir: Path, fingerprint: str | None) -> str:
    """`write` for a command that already holds the folder's lock."""
    text = table(output_dir, fingerprint)
    atomic.write_text(output_dir / "results.md", "# Soups (test)\n\n" + text + "\n")
    return text


class TableRows(NamedTuple):
    """A soups folder's results.json dicts as Table IV takes them, each list in `METHODS` order: the rows `shown`,
    and those left out, cooked from another set of ingredients (`other_set`) or compared against another best
    single checkpoint (`other_best`: a cook on another --greedy-metric), whose Δ and interval would stand on
    another baseline."""

    shown: list[dict]
    other_set: list[dict]
    other_best: list[dict]


def table_rows(output_dir: Path, fingerprint: str | None = None, methods=None) -> TableRows:
    """The method folders' results.json (of `methods`, default all) sorted into `TableRows`: shown are those of
    `fingerprint`'s ingredients (default: the newest row's) compared against the newest of them's best single
    checkpoint."""
    order = {m: i for i, m in enumerate(METHODS)}
    found = [r for r in method_results(output_dir) if methods is None or r["method"] in methods]
    if fingerprint is None and found:
        fingerprint = found[-1].get("ingredients_fingerprint")
    same_set = [r for r in found if r.get("ingredients_fingerprint") == fingerprint]
    best = same_set[-1]["best_single"]["name"] if same_set else None

    def in_order(rows) -> list[dict]:
        return sorted(rows, key=lambda r: order[r["method"]])

    return TableRows(in_order(r for r in same_set if r["best_single"]["name"] == best),
                     in_order(r for r in found if r.get("ingredients_fingerprint") != fingerprint),
                     in_order(r for r in same_set if r["best_single"]["name"] != best))


def _left_out_note(rows: TableRows) -> str:
    """Why rows are not in the table, per reason."""
    notes = []
    if rows.other_set:
        notes.append(f"{', '.join(r['method'] + '/' for r in rows.other_set)} (cooked from another set of "
                     f"ingredients than the rows above, or before ingredients were fingerprinted)")
    if rows.other_best:
        names = ", ".join(f"{r['method']}/ (against {r['best_single']['name']}, best on val "
                          f"{r.get('selection', {}).get('metric', 'accuracy')})" for r in rows.other_best)
        notes.append(f"{names}: compared against another best single checkpoint, chosen on another "
                     f"--greedy-metric")
    return f"Left out: {'; '.join(notes)}; cook them again to compare."


def table(output_dir: Path, fingerprint: str | None = None, methods=None) -> str:
    """Table IV (soups/results.md's body) from the method folders' results.json as they are now (of `methods`,
    default all), written nowhere: `analyze` shows it rather than a results.md a stopped soup command may have
    left behind."""
    rows = table_rows(output_dir, fingerprint, methods)
    table = report.table_iv_of_results(rows.shown)
    if rows.shown and (note := report.copies_note(rows.shown[-1])):
        table += "\n\n" + note
    if rows.other_set or rows.other_best:
        table += "\n\n" + _left_out_note(rows)
    return table
