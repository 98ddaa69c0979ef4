"""analysis/report.html: markdown to HTML, the self-contained page rendered in headless Chromium (every image
loaded, not blank, no sideways scrolling at phone width), and the results.md headers that say how each method chose.

The Chromium tests skip where no `chromium` is installed (`.ci/run` installs Debian's package).
"""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from ich_keras import analyze, soup
from ich_keras.analysis import figures, html
from ich_keras.config import config_from_dict
from ich_keras.fit import run as fit
from ich_keras.soups.report import how_chosen, results_markdown

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
# Written into the DOM once the page has loaded, so that --dump-dom reports what the browser saw.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const b = document.body;
  b.setAttribute("data-images", images.length);
  b.setAttribute("data-broken", images.filter(i => !(i.complete && i.naturalWidth > 0)).length);
  b.setAttribute("data-text", b.innerText.trim().length);
  b.setAttribute("data-overflow", document.documentElement.scrollWidth - window.innerWidth);
});
</script>"""


def _chromium(page, tmp_path, width: int, *action) -> str:
    """Runs headless Chromium on `page` at `width` px and returns its stdout."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={width},2200",
               "--virtual-time-budget=5000", *action, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_in_browser(report, tmp_path, screenshots=None) -> dict:
    """Loads `report` with the probe at phone and desktop widths; returns the probe's numbers per width and
    checks the screenshots are not blank. Screenshots are kept in `screenshots` when given."""
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    seen = {}
    for width in (390, 1280):
        dom = _chromium(probed, tmp_path, width, "--dump-dom")
        body = re.search(r"<body([^>]*)>", dom).group(1)
        seen[width] = {k: int(v) for k, v in re.findall(r'data-(\w+)="(-?\d+)"', body)}
        shot = (screenshots or tmp_path) / f"report_{width}px.png"
        _chromium(report, tmp_path, width, f"--screenshot={shot}")
        with Image.open(shot) as image:
            pixels = np.asarray(image.convert("L"), float)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005, f"blank screenshot at {width} px"
    return seen


def test_markdown_tables_images_and_escaping(tmp_path):
    Image.new("RGB", (4, 3), "red").save(tmp_path / "fig.png")
    text = ("# Title\n\nRun `a<b>` with **best** & more.\n\n| Model | acc |\n|---|---:|\n| **x** | 1.00 |\n\n"
            "![a figure](fig.png)\n\n![gone](missing.png)\n\n|not a table\n\n```\n<raw>\n```\n")
    page = html.markdown_to_html(text, tmp_path)
    assert "<h1>Title</h1>" in page
    assert "<code>a&lt;b&gt;</code>" in page and "<strong>best</strong> &amp; more" in page
    assert '<td style=text-align:right>1.00</td>' in page and "<td><strong>x</strong></td>" in page
    assert '<div class="scroll"><table>' in page  # wide tables scroll inside their box, not the page
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(encoded) == (tmp_path / "fig.png").read_bytes()
    assert "figure missing.png is missing" in page
    assert "<p>|not a table</p>" in page and "<pre><code>&lt;raw&gt;</code></pre>" in page


def test_provenance_blocks():
    assert "No soup has a provenance.json" in html.provenance_html({})
    block = html.provenance_html({"uniform": {"ingredients": ["a<b"]}})
    assert "<summary>uniform</summary>" in block and "a&lt;b" in block


@needs_chromium
def test_report_page_renders_with_every_figure_at_phone_and_desktop_width(tmp_path):
    """A page made of real figures (synthetic numbers) and a wide table: fast, no training."""
    rng = np.random.default_rng(0)
    figures.mds_figure(rng.normal(size=(5, 2)), ["epoch_001", "epoch_002", "epoch_003", "uniform", "soft_voting"],
                       ["ingredient"] * 3 + ["soup", "ensemble"], rng.uniform(0.5, 0.9, 5), tmp_path / "mds.png")
    figures.confusion_figure({"best": [[3, 1], [0, 4]]}, ["arch", "dome"], tmp_path / "confusion.png")
    wide = "| " + " | ".join(f"column {i}" for i in range(30)) + " |\n|" + "---:|" * 30 + "\n| " + \
        " | ".join("12.34" for _ in range(30)) + " |"
    markdown = f"# Analysis\n\nA run.\n\n## Table\n\n{wide}\n\n## MDS\n\n![MDS](mds.png)\n\n![c](confusion.png)\n"
    report = tmp_path / "report.html"
    report.write_text(html.report_page(markdown, tmp_path, "test", {"uniform": {"method": "uniform"}}))
    seen = check_in_browser(report, tmp_path)
    for width, probe in seen.items():
        assert probe["images"] == 2 and probe["broken"] == 0, (width, probe)
        assert probe["text"] > 200 and probe["overflow"] <= 0, (width, probe)


@pytest.mark.slow  # about 2 min of CPU (5 on a busy 2-core machine): a 2-epoch fit, three soups, the analysis
def test_analyze_writes_a_report_page_a_browser_shows_whole(tmp_path):
    workdir = tmp_path / "run"
    fit(config_from_dict({
        "data": {"source": "digits", "image_size": 32, "max_per_class": 5, "val_fraction": 0.3},
        "augment": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": 2, "batch_size": 10, "learning_rate": 3e-3, "restart_epochs": 1.0},
        "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 2}]},
        "log": {"verbose": 0},
    }), workdir)
    soup.main([str(workdir), "--uniform", "--greedy", "--soft-voting", "--quiet"])
    (workdir / "soups" / "uniform" / "provenance.json").write_text(json.dumps({"command": "soup --uniform"}))
    analyze.main([str(workdir), "--quiet", "--batch-size", "10"])
    out = workdir / "analysis"
    for name in ("training.png", "confusion.png", "mds.png", "accuracy.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 300, name
    report_md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "](training.png)" in report_md and "](confusion.png)" in report_md
    assert "src=\"data:" in page and "src=\"training.png" not in page  # self-contained
    # The page carries the numbers of report.md: every cell of its Models table.
    models_table = report_md.split("## Models")[1].split("##")[0]
    for cell in re.findall(r"\| ([-+]?\d+\.\d+) ", models_table):
        assert f">{cell}<" in page
    assert "soup --uniform" in page  # the soup's provenance
    if CHROMIUM:
        seen = check_in_browser(out / "report.html", tmp_path)
        for width, probe in seen.items():
            assert probe["images"] >= 4 and probe["broken"] == 0 and probe["overflow"] <= 0, (width, probe)


def test_results_headers_say_how_each_method_chose():
    ingredients = [{"name": f"epoch_00{i}.weights.h5", "val": {"loss": 1.0, "accuracy": 0.5, "precision": 0.5,
                                                               "recall": 0.5, "f1": 0.5}} for i in range(4)]
    common = {"run_dir": "runs/x", "ingredients": ingredients, "selection": {"metric": "f1", "accept": "ge"}}
    assert how_chosen({**common, "method": "uniform"}) == "all 4 ingredients, weights averaged"
    assert how_chosen({**common, "method": "soft_voting"}).startswith("all 4 ingredients, averaged probabilities")
    assert how_chosen({**common, "method": "greedy"}).startswith("greedy on val by f1")
    assert "does not drop" in how_chosen({**common, "method": "greedy"})
    assert "is better" in how_chosen({**common, "method": "pruned", "selection": {"metric": "loss",
                                                                                  "accept": "gt"}})
    assert "(3 epochs)" in how_chosen({**common, "method": "learned", "info": {"epochs": 3}})
    statistics = {"running_statistics_averaged": 6, "new_head": ["h/0", "h/1"]}
    assert how_chosen({**common, "method": "ties", "info": statistics}).endswith(
        "; new head (2 arrays) and BatchNorm statistics (6 arrays) averaged uniformly")
    assert how_chosen({**common, "method": "slerp", "info": {**statistics, "new_head": [], "t": 0.3}}) == (
        "SLERP between the two best ingredients on val (t 0.3); BatchNorm statistics (6 arrays) interpolated linearly")
    metrics = {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    text = results_markdown({**common, "method": "uniform", "label": "Uniform soup", "test": metrics,
                             "chosen": ["a"], "forward_passes": 1,
                             "best_single": {"name": "epoch_000.weights.h5", "test": metrics}})
    assert "selection on val" not in text and "all 4 ingredients, weights averaged" in text


def test_a_damaged_provenance_json_is_named(tmp_path):
    from ich_keras.errors import UserError

    (tmp_path / "soups/greedy").mkdir(parents=True)
    (tmp_path / "soups/greedy/provenance.json").write_text('{"ingredients": [')  # cut short
    with pytest.raises(UserError, match=r"soups/greedy/provenance\.json is not valid JSON"):
        html.soup_provenance(tmp_path)
