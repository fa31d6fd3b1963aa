"""The HTML report in a real browser: headless Chromium renders it, every image loads, no error.

Dependency-free: a copy of the page gets a script at the top of <head> that records
``window.onerror``, image load errors and ``console.error`` and, on ``load``, writes a JSON
summary (images, images with ``complete && naturalWidth > 0``, errors) into <pre id="__check">;
``chromium --dump-dom`` prints the DOM after the page ran, and its stderr log (``CONSOLE`` lines,
``Uncaught`` exceptions) is checked too. Skipped when no Chromium is installed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from longctx.arena.report import write_report

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars"]  # --no-sandbox: CI runs as root
CONSOLE_LINE = re.compile(r"CONSOLE[:(]|Uncaught")
CHECK_SCRIPT = """<script>
(function () {
  var errors = [];
  window.onerror = function (msg, src, line) { errors.push("onerror: " + msg + " @" + line); };
  window.addEventListener("error", function (e) {
    if (e.target && e.target.tagName === "IMG") errors.push("image error: " + e.target.alt);
  }, true);
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = function (i) { return i.complete && i.naturalWidth > 0; };
    var pre = document.createElement("pre");
    pre.id = "__check";
    pre.textContent = JSON.stringify({
      images: imgs.length, loaded: imgs.filter(ok).length,
      broken: imgs.filter(function (i) { return !ok(i); }).map(function (i) { return i.alt; }),
      errors: errors});
    document.body.appendChild(pre);
  });
})();
</script>"""


def chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} is on PATH")


def run_browser(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """One headless Chromium run with its own profile (runs in parallel do not share a lock)."""
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def check_page(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """``(summary, console lines)`` of ``page``: the injected script's JSON and every stderr
    line of the browser log that is console output or an uncaught exception."""
    text = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0
    probe = tmp / f"{page.stem}.checked.html"
    probe.write_text(text[:at] + CHECK_SCRIPT + text[at:], encoding="utf-8")
    proc = run_browser(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                        "--dump-dom", probe.as_uri()], tmp / "profile-dom")
    found = re.search(r'<pre id="__check">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, f"no check summary in the dumped DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    console = [ln for ln in proc.stderr.splitlines() if CONSOLE_LINE.search(ln)]
    return json.loads(html.unescape(found.group(1))), console


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.arena.report_store import write_fake_store

    chromium()  # skip before building anything
    return write_report(write_fake_store(tmp_path_factory.mktemp("browser")))


def test_every_image_loads_without_errors(report: dict[str, Path], tmp_path: Path) -> None:
    summary, console = check_page(report["html"], tmp_path)
    n_png = sum(p.suffix == ".png" for p in report.values())
    assert summary["images"] == n_png >= 10  # every section's plot, incl. heat maps and bench
    assert summary["loaded"] == summary["images"], summary["broken"]
    assert summary["errors"] == [] and console == []


def test_screenshot(report: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    proc = run_browser([f"--screenshot={shot}", "--window-size=1280,4000",
                        report["html"].as_uri()], tmp_path / "profile-shot")
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    assert pixels.std() > 0.05  # not a blank page: header band, cards, plots
    colours = np.unique((pixels[::8, ::8] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200


def test_checker_catches_a_broken_image_and_errors(report: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """The check itself: a corrupt data URI, an uncaught exception and console.error are seen."""
    text = report["html"].read_text(encoding="utf-8")
    broken = re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"',
                    text, count=1)
    broken = broken.replace("</body>", "<script>console.error('boom'); notDefined();</script>"
                            "</body>")
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    summary, console = check_page(page, tmp_path)
    assert summary["loaded"] == summary["images"] - 1
    assert summary["broken"] == ["Accuracy vs sequence length"]  # the page's first image
    joined = " ".join(summary["errors"])
    assert "image error" in joined and "console.error: boom" in joined and "notDefined" in joined
    assert any("Uncaught" in ln for ln in console) and any("boom" in ln for ln in console)
