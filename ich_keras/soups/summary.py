"""The soups folder's Table IV (results.md): every method's results.json there, from one set of ingredients.

A method folder holds one soup and its results.json (`ich_keras.soups.runner`); the table beside them is rebuilt from
those files whenever a command publishes a method, so it shows what is on disk, never a stopped command's rows.
"""

from __future__ import annotations

from pathlib import Path

from ich_keras import atomic
from ich_keras.soups import merges, publish, report

# Every soup method, in the order the table (and the cook command's flags) list them.
METHODS = ("uniform", "greedy", "pruned", "learned", *merges.MERGES, "soft_voting")
LABELS = {"uniform": "Uniform soup", "greedy": "Greedy soup", "pruned": "Pruned soup", "learned": "Learned soup",
          **merges.LABELS, "soft_voting": "Soft voting"}


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


def _baseline(results: dict) -> tuple:
    """What a row is compared against: its ingredient set and its best single checkpoint (chosen on val by the
    cook's --greedy-metric), the baseline of its Δ, bootstrap interval and McNemar p."""
    return results.get("ingredients_fingerprint"), results.get("best_single", {}).get("name")


def comparable(found: list[dict], fingerprint: str | None = None) -> tuple[list[dict], list[dict]]:
    """The results.json dicts of one table, in `METHODS` order, and those left out of it, from `found` (oldest
    first): the rows cooked from `fingerprint`'s ingredients (default: the newest row's) and against the same best
    single checkpoint as the newest of them; a row against another one would put its Δ and its interval on two
    baselines."""
    order = {m: i for i, m in enumerate(METHODS)}
    if fingerprint is None and found:
        fingerprint = found[-1].get("ingredients_fingerprint")
    same_set = [r for r in found if r.get("ingredients_fingerprint") == fingerprint]
    baseline = _baseline(same_set[-1]) if same_set else None
    kept = sorted((r for r in same_set if _baseline(r) == baseline), key=lambda r: order[r["method"]])
    left_out = sorted((r for r in found if r not in kept), key=lambda r: order[r["method"]])
    return kept, left_out


def _left_out_note(left_out: list[dict], kept: list[dict]) -> str:
    """Why rows are not in the table, per reason."""
    fingerprint = kept[0].get("ingredients_fingerprint") if kept else None
    other_set = [f"{r['method']}/" for r in left_out if r.get("ingredients_fingerprint") != fingerprint]
    other_best = [r for r in left_out if r.get("ingredients_fingerprint") == fingerprint]
    notes = []
    if other_set:
        notes.append(f"{', '.join(other_set)} (cooked from another set of ingredients than the rows above, or "
                     f"before ingredients were fingerprinted)")
    if other_best:
        names = ", ".join(f"{r['method']}/ (against {r['best_single']['name']}, best on val "
                          f"{r.get('selection', {}).get('metric', 'accuracy')})" for r in other_best)
        notes.append(f"{names}: compared against another best single checkpoint, chosen on another "
                     f"--greedy-metric")
    return f"Left out: {'; '.join(notes)}; cook them again to compare."


def table(output_dir: Path, fingerprint: str | None = None, methods=None) -> str:
    """Table IV (soups/results.md's body) from the method folders' results.json as they are now (of `methods`,
    default all), written nowhere: `analyze` shows it rather than a results.md a stopped soup command may have
    left behind."""
    found = [r for r in method_results(output_dir) if methods is None or r["method"] in methods]
    kept, left_out = comparable(found, fingerprint)
    table = report.summary(kept)
    if kept and (note := report.copies_note(kept[-1])):
        table += "\n\n" + note
    if left_out:
        table += "\n\n" + _left_out_note(left_out, kept)
    return table
