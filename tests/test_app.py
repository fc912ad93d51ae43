"""`clip4dm app`: the logic directly, then the page in a real headless Chromium."""

from __future__ import annotations

import os
import socket

import pytest

from feedback import InputError, MisalignmentDetector
from generation.app import App, AppConfig, report_html
from shapesworld.benchmark import load_shapes_foil
from shapesworld.pipelines import LOOP_DETECTOR


@pytest.fixture(scope="module")
def detector():
    return MisalignmentDetector.from_pretrained("shapes-tiny")


@pytest.fixture(scope="module")
def caught_foil(detector, tmp_path_factory):
    """A held-out foil whose foil word the shipped detector flags (it catches ~62% of them)."""
    folder = tmp_path_factory.mktemp("foil")
    for i, s in enumerate(load_shapes_foil(n=40)):
        if s.is_original or s.kind == "position":
            continue
        rep = detector.detect_regions([s.image], [s.caption])[0]  # what the app checks
        foil_word = s.foil_words[0]
        if rep.misaligned_words == [foil_word]:
            path = folder / f"foil_{i}.png"
            s.image.resize((128, 128)).save(path)
            return str(path), s.caption, foil_word
    pytest.fail("no caught foil among 40")


def test_check_marks_the_flagged_words(detector, caught_foil):
    path, caption, word = caught_foil
    page, d, json_path = App(detector).check(path, caption)
    assert "<mark class='flag'>" in page and f">{word}</span>" in page
    flagged = page.split(f">{word}</span>")[0].rsplit("<mark class='flag'>", 1)[1]
    assert "<span class='w'" in flagged
    assert d["misaligned_words"] == [word] and d["settings"]["threshold"] < 0
    assert os.path.getsize(json_path) > 100


def test_bad_input_gets_one_line_messages(detector, tmp_path, caught_foil):
    app = App(detector, config=AppConfig(max_pixels=64 * 64, max_caption_chars=20))
    not_image = tmp_path / "x.png"
    not_image.write_text("hello")
    with pytest.raises(InputError, match="not an image|cannot|read"):
        app.check(str(not_image), "a red circle")
    with pytest.raises(InputError, match="empty"):
        app.check(caught_foil[0], "   ")
    with pytest.raises(InputError, match="characters"):
        app.check(caught_foil[0], "a red circle " * 5)
    with pytest.raises(InputError, match="pixels"):
        app.check(caught_foil[0], "a red circle")  # 128x128 > 64x64
    with pytest.raises(InputError, match="no image"):
        app.check(None, "a red circle")
    with pytest.raises(InputError, match="without a pipeline"):
        next(app.generate("a red circle", "reweight", 2, 5, 0))


def test_report_html_shades_by_sign(detector, caught_foil):
    path, caption, word = caught_foil
    from feedback import load_image

    rep = detector(load_image(path), caption)
    page = report_html(rep)
    assert "rgba(220,40,40" in page  # negative words red
    assert page.count("class='w'") == len(rep.words)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_app_in_a_real_browser(caught_foil, tmp_path, chromium_path):
    """`clip4dm app` as a user starts it (a subprocess), driven in headless Chromium."""
    import subprocess
    import sys
    import time
    import urllib.request

    from playwright.sync_api import expect, sync_playwright

    from shapesworld.pipelines import prompt_set

    port = _free_port()
    # every warning shown (as a user with PYTHONWARNINGS=always would see them)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "always"}
    server = subprocess.Popen(
        [sys.executable, "-m", "generation.cli", "app", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start within 2 minutes")
        path, caption, word = caught_foil
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            header = page.locator("h1").first.locator("xpath=..").inner_text()
            assert LOOP_DETECTOR in header and "/" not in header.split("Detector:")[-1]
            page.locator("input[type=file]").first.set_input_files(path)
            page.locator("#caption textarea").fill(caption)
            page.locator("#check").click()
            mark = page.locator("#check-result mark.flag")
            expect(mark.first).to_be_visible(timeout=60_000)
            assert mark.all_inner_texts() == [word]
            page.screenshot(path=str(tmp_path / "check.png"), full_page=True)

            page.get_by_role("tab", name="Generate and fix").click()
            page.locator("#prompt textarea").fill(prompt_set(2)[1].text)
            page.locator("#generate").click()
            status = page.locator("#rounds .status")
            expect(status).to_contain_text("done", timeout=120_000)
            assert page.locator("#rounds .card img").count() >= 1
            assert "P(right)" in page.locator("#rounds").inner_text()  # the shipped card
            page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    log = server.stdout.read()
    server.stdout.close()
    # no warnings about unclosed loops or files per request, and no server path shown
    assert "unclosed" not in log and "ResourceWarning" not in log, log[-2000:]
    assert "local-dir:" not in log and "/weights/" not in log, log[-2000:]


def test_the_page_names_models_never_server_paths(tmp_path):
    from generation.app import model_label

    assert model_label("shapes-tiny-gen") == "shapes-tiny-gen"
    assert model_label("hf-hub:org/repo") == "hf-hub:org/repo"
    assert model_label("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    folder = tmp_path / "srv" / "my-clip"
    folder.mkdir(parents=True)
    assert model_label(f"local-dir:{folder}") == "my-clip"
    assert model_label(str(folder)) == "my-clip"


def test_a_check_closes_what_it_opens(detector, caught_foil):
    import gc
    import warnings

    gc.collect()  # earlier tests' garbage is not this test's
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            App(detector).check(caught_foil[0], caught_foil[1])
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks


def test_a_check_does_not_wait_for_another_users_generation(detector, caught_foil):
    import threading

    app = App(detector)
    with app._pipe_lock:  # someone else's generation is running
        done = threading.Event()
        t = threading.Thread(target=lambda: (app.check(caught_foil[0], caught_foil[1]), done.set()))
        t.start()
        assert done.wait(timeout=60), "check blocked on the generation lock"
        t.join()


def test_generate_streams_rounds_with_the_chosen_budget(detector):
    from shapesworld.pipelines import load_pipeline, prompt_set

    app = App(
        MisalignmentDetector.from_pretrained("shapes-tiny", mode="most-negative"),
        load_pipeline(),
    )
    pages = list(app.generate(prompt_set(2)[1].text, "reweight", 3, 4, 0, rounds=2, per_round=2))
    # most-negative mode always flags a word, so the loop uses its 2 rounds: 2 + 1 images
    assert len(pages) == 3 and "working" in pages[0] and "done: 3 image(s)" in pages[-1]
    assert pages[-1].count("<img") == 3
    with pytest.raises(InputError, match="max_rounds"):
        next(app.generate("a red circle", "reweight", 2, 4, 0, rounds=0))


def test_generate_with_the_shipped_verifier_shows_p_right():
    from feedback import Verifier
    from shapesworld.pipelines import load_pipeline, loop_threshold, loop_verifier_path, prompt_set

    det = MisalignmentDetector.from_pretrained(LOOP_DETECTOR, threshold=loop_threshold())
    app = App(det, load_pipeline(), verifier=Verifier.load(loop_verifier_path()))
    pages = list(app.generate(prompt_set(2)[0].text, "resample", 2, 4, 0))
    assert all("P(right)" in p for p in pages)
    assert "stopped:" in pages[-1]
