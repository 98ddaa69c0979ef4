"""analysis/report.html: report.md as one self-contained page (figures inlined as base64 PNG), plus each soup's
provenance, readable from a phone's width to a desktop's.

Only the markdown the analysis writes is understood: headings, pipe tables (with their column alignment), fenced
code, `![alt](file.png)` images, paragraphs with **bold** and `code`. No JavaScript, no external resource.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from ich_keras import atomic
from ich_keras.markdown import row_cells

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a1a1a; background: #fff;
       margin: 0 auto; padding: 1rem; max-width: 72rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; } h2 { font-size: 1.25rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { font-size: 1.05rem; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem auto; }
figure { margin: 0.5rem 0; overflow-x: auto; } figcaption { font-size: 0.85rem; color: #555; text-align: center; }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; margin: 0.5rem 0; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.5rem; border-bottom: 1px solid #eee; white-space: nowrap; }
th { background: #f6f6f6; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fbfbfb; }
code { font-size: 0.9em; background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; overflow-wrap: anywhere; }
pre { overflow-x: auto; background: #f6f6f6; padding: 0.6rem; font-size: 0.8rem; }
details { margin: 0.4rem 0; } summary { cursor: pointer; font-weight: 600; }
/* On a phone a multi-panel figure shrunk to the screen is unreadable: it keeps 600 px and scrolls in its box. */
@media (max-width: 600px) { body { font-size: 14px; padding: 0.6rem; } table { font-size: 0.78rem; }
                            figure img { min-width: 600px; } }
"""
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
ALIGN = {(False, True): "right", (True, True): "center", (True, False): "left"}


def _inline(text: str, base: Path) -> str:
    """Escaped text with **bold**, `code` and images (inlined from `base`)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part, quote=False)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        out.append(IMAGE.sub(lambda m: _image(m.group(1), m.group(2), base), escaped))
    return "".join(out)


def _image(alt: str, source: str, base: Path) -> str:
    path = base / html.unescape(source)
    if not path.is_file():
        return f"<em>(figure {html.escape(source)} is missing)</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" loading="eager">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _table(lines: list[str], base: Path) -> str:
    """A pipe table; the second line gives each column's alignment (`---:` right, `:---:` centre)."""
    head, rule, body = row_cells(lines[0]), row_cells(lines[1]), [row_cells(line) for line in lines[2:]]
    aligns = [ALIGN.get((r.startswith(":"), r.endswith(":")), "") for r in rule]

    def row(cells, tag):
        return "<tr>" + "".join(
            f'<{tag}{f" style=text-align:{a}" if a else ""}>{_inline(c, base)}</{tag}>'
            for c, a in zip(cells, aligns + [""] * len(cells))) + "</tr>"

    rows = "\n".join(row(cells, "td") for cells in body)
    return f'<div class="scroll"><table>\n<thead>{row(head, "th")}</thead>\n<tbody>\n{rows}\n</tbody></table></div>'


def markdown_to_html(text: str, base=".") -> str:
    """The analysis' markdown as HTML (module docstring); images are read from `base` and inlined.

    Args:
        text: markdown as report.md holds it.
        base: the folder image paths are relative to.

    Returns:
        An HTML fragment.
    """
    base, lines, out, i = Path(base), text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1:end]))}</code></pre>")
            i = end + 1
        elif match := re.match(r"(#{1,4}) (.*)", line):
            level = len(match.group(1))
            out.append(f"<h{level}>{_inline(match.group(2), base)}</h{level}>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1]):
            end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
            out.append(_table(lines[i:end], base))
            i = end
        else:
            # From i + 1: line i itself may start like a table or heading that did not parse as one.
            starts = ("|", "#", "```")
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].strip() or lines[j].startswith(starts)),
                       len(lines))
            body = _inline(" ".join(lines[i:end]), base)
            out.append(body if body.startswith("<figure>") and body.endswith("</figure>") else f"<p>{body}</p>")
            i = end
    return "\n".join(out)


def provenance_html(provenance: dict) -> str:
    """Each soup's provenance.json, pretty-printed in a collapsible block ({soup name: dict})."""
    blocks = [f"<details><summary>{html.escape(name)}</summary><pre><code>"
              f"{html.escape(json.dumps(record, indent=2, sort_keys=True))}</code></pre></details>"
              for name, record in provenance.items()]
    return "\n".join(blocks) if blocks else "<p>No soup has a provenance.json.</p>"


def report_page(markdown: str, base, title: str, provenance: dict | None = None) -> str:
    """The whole report.html: `markdown` (report.md's text) with its figures inlined, then the soups' provenance.

    Args:
        markdown: the report's markdown.
        base: the folder its image paths are relative to (RUN_DIR/analysis).
        title: the page title.
        provenance: {soup name: provenance.json dict}; None leaves the section out.

    Returns:
        The page as a string.
    """
    body = markdown_to_html(markdown, base)
    if provenance is not None:
        body += "\n<h2>Provenance of each soup</h2>\n" + provenance_html(provenance)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def soup_provenance(run_dir) -> dict:
    """{soup folder name: provenance.json dict} for every RUN_DIR/soups/*/provenance.json; one that does not parse
    is a UserError naming it (`atomic.read_json`)."""
    return {path.parent.name: atomic.read_json(path)
            for path in sorted(Path(run_dir, "soups").glob("*/provenance.json"))}
