"""Regenerate the docs' pictures from the documented commands, and record the settings they
were made with (docs/screenshots.json; a test fails when the demo's defaults change without a
new screenshot).

    python docs/screenshots.py             # needs chromium (apt-get install -y chromium)
    python docs/screenshots.py region      # only the region figure (no browser needed)

- docs/demo-report.png: `clip4dm demo --out DIR` (the README's main command, defaults), its
  report.html in headless Chromium;
- docs/app-check.png, docs/app-generate.png: `clip4dm app` (defaults), a caught foil in the
  Check tab and a held-out prompt in the Generate tab;
- docs/region-figure.png: `clip4dm check IMAGE CAPTION --regions --figure ...` on a rendered
  red circle left of a blue square, captioned with the colours swapped (the regions page).

The fine-tuning curves (docs/finetune*-curves.png) are written by
benchmarks/finetune_faithfulness.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
#: The demo's settings a screenshot shows (compared with the CLI's defaults by a test).
SETTINGS = ("strategy", "budget", "steps", "guidance", "seed", "model", "verifier", "pipeline")


def demo_settings() -> dict:
    from generation.cli import build_parser

    args = build_parser().parse_args(["demo"])
    return {k: getattr(args, k) for k in SETTINGS}


def _browser(pw):
    return pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])


def demo_report(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from generation.cli import main

    tmp = Path(tempfile.mkdtemp(prefix="clip4dm-shot-"))
    assert main(["demo", "--out", str(tmp)]) == 0
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto((tmp / "report.html").as_uri())
        page.screenshot(path=str(out / "demo-report.png"), full_page=False)
        browser.close()


#: The region figure's scene and caption: the colours swapped between the two objects.
REGION_CAPTION = "a blue circle to the left of a red square"


def region_figure(out: Path) -> None:
    from generation.cli import main
    from shapesworld import Scene, ShapeObject, render_scene

    tmp = Path(tempfile.mkdtemp(prefix="clip4dm-shot-"))
    circle = ShapeObject("red", "circle", "small", 8, 16, 7.5)
    square = ShapeObject("blue", "square", "large", 23, 16, 13)
    render_scene(Scene((circle, square), axis="x"), 128).save(tmp / "image.png")
    args = ["check", str(tmp / "image.png"), REGION_CAPTION, "--regions", "--model", "shapes-tiny"]
    assert main(args + ["--figure", str(out / "region-figure.png")]) == 0


def app_shots(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from feedback import MisalignmentDetector
    from shapesworld.benchmark import load_shapes_foil
    from shapesworld.pipelines import prompt_set

    det = MisalignmentDetector.from_pretrained("shapes-tiny")
    tmp = Path(tempfile.mkdtemp(prefix="clip4dm-shot-"))
    for i, s in enumerate(load_shapes_foil(n=40)):
        if s.is_original or s.kind == "position":
            continue
        if det(s.image, s.caption).misaligned_words == [s.foil_words[0]]:
            path = tmp / f"foil_{i}.png"
            s.image.resize((128, 128)).save(path)
            caption = s.caption
            break
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "generation.cli", "app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(str(path))
            page.locator("#caption textarea").fill(caption)
            page.locator("#check").click()
            expect(page.locator("#check-result mark.flag").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(out / "app-check.png"), full_page=True)
            page.get_by_role("tab", name="Generate and fix").click()
            page.locator("#prompt textarea").fill(prompt_set(2)[1].text)
            page.locator("#generate").click()
            expect(page.locator("#rounds .status")).to_contain_text("done", timeout=120_000)
            page.screenshot(path=str(out / "app-generate.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    region_figure(DOCS)
    if sys.argv[1:] == ["region"]:
        sys.exit(0)
    demo_report(DOCS)
    app_shots(DOCS)
    (DOCS / "screenshots.json").write_text(
        json.dumps({"demo": demo_settings(), "command": "python docs/screenshots.py"}, indent=2)
        + "\n"
    )
    print(
        "wrote docs/region-figure.png, docs/demo-report.png, docs/app-check.png, "
        "docs/app-generate.png"
    )
