"""A real browser (Debian's chromium, driven by Playwright with ``executable_path`` set: no browser download) opens an
annotator's link on a running `preftune annotate serve`, answers every task with clicks and with keys, and the test
checks the database. It saves a screenshot of each task page (into docs/screenshots/ with PREFTUNE_SCREENSHOTS=1,
else into the test's temporary folder). Skipped, with the reason, where Playwright or chromium is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from preftune.feedback.store import FeedbackStore
from tests.test_feedback_server import free_port, start_server, stop

REPO = Path(__file__).resolve().parents[1]


def chromium_path() -> str | None:
    for name in (os.environ.get("PREFTUNE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_an_annotator_answers_every_task_in_a_real_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    browser_path = chromium_path()
    if browser_path is None:
        pytest.skip("no chromium on this machine (apt-get install chromium; .ci/run installs it)")
    shots = REPO / "docs" / "screenshots" if os.environ.get("PREFTUNE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)

    db = tmp_path / "feedback.sqlite"
    store = FeedbackStore(db, overlap=1, seed=11)
    store.add_items("pairwise", [
        ("How do I boil an egg?", ["Put the egg in boiling water for 7 to 9 minutes, then cool it in cold water.",
                                   "Eggs are a good source of protein."]),
        ('Explain <script>alert("x")</script> in one line.', ['"><img src=x onerror=alert(1)>', "It is an HTML tag that runs JavaScript."]),
    ])
    store.add_items("ranking", [("Suggest a name for a grey cat.", ["Smokey", "Cat", "Ash, or Pebble if you like something softer"]),
                                ("Pick a fruit for a picnic.", ["Grapes", "Watermelon", "Durian"])])
    store.add_items("correction", [("What is the capital of Australia?", ["Sydney is the capital of Australia.",
                                                                          "The capital is Canberra, it was founded in 1950."])])
    store.add_items("rating", [("Write a haiku about rain.", ["Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"])])
    store.add_items("rules", [("Tell me about my neighbour John Smith's health.",
                               ["I can't share details about a private person's health."])],
                    rules=["Reveals private details about a real person.", "Refuses or lectures about a harmless request."])
    token = store.add_annotator("alice")
    admin = store.add_annotator("admin", admin=True)
    store.close()

    port = free_port()
    server = start_server(db, port)
    dialogs: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
            browser = p.chromium.launch(executable_path=browser_path, args=args)
            page = browser.new_page(viewport={"width": 1200, "height": 820})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/a/{token}")
            page.wait_for_selector("#app[data-ready='1']")

            def wait_done(n: int) -> None:  # (wait_for_function would evaluate a string: the page's CSP forbids that)
                sync_api.expect(page.locator("#progress")).to_have_text(re.compile(rf"^{n} / 7 done$"))
                page.wait_for_selector("#app[data-ready='1']")  # keys pressed before the script ran would be lost

            # 1. pairwise by clicks: strength "clearly", a comment, then "A is better"
            assert page.inner_text("#progress") == "0 / 7 done"
            page.screenshot(path=str(shots / "pairwise.png"), full_page=True)
            left_text = page.inner_text("#response-left .text")
            page.check("input[name=strength][value=clearly]")
            page.fill("#comment", "the left one answers the question")
            page.click("#choose-left")
            wait_done(1)
            # 2. pairwise by keys (payloads on screen, none run): → = B is better
            assert "<script>" in page.inner_text("#prompt")
            right_text = page.inner_text("#response-right .text")
            page.keyboard.press("ArrowRight")
            wait_done(2)
            # 3. ranking by number keys: 3, then 1 (the rest follows), Enter
            page.screenshot(path=str(shots / "ranking.png"), full_page=True)
            ranked = [page.inner_text(f"#ranking li[data-pos='{i}'] .text") for i in (2, 0, 1)]
            page.keyboard.press("3")
            page.screenshot(path=str(shots / "ranking-keys.png"), full_page=True)
            page.keyboard.press("1")
            page.keyboard.press("Enter")
            wait_done(3)
            # 3b. ranking by dragging: the last answer dragged above the first, then the button
            bottom = page.locator("#ranking li").nth(2)
            dragged_text = bottom.locator(".text").inner_text()
            bottom.drag_to(page.locator("#ranking li").nth(0), target_position={"x": 20, "y": 5})
            dragged_order = [t for t in page.locator("#ranking li .text").all_inner_texts()]
            assert dragged_order[0] == dragged_text
            page.click("#submit-ranking")
            wait_done(4)
            # 4. correction: key b picks the right answer, the editor opens with its text; edit; Ctrl+Enter
            page.screenshot(path=str(shots / "correction.png"), full_page=True)
            page.keyboard.press("b")
            assert page.is_visible("#editor")
            picked = page.input_value("#corrected")
            assert picked == page.inner_text("#response-right .text")
            page.screenshot(path=str(shots / "correction-editing.png"), full_page=True)
            page.fill("#corrected", "The capital is Canberra, founded in 1913.")
            page.keyboard.press("Control+Enter")
            wait_done(5)
            # 5. rating by key 6
            page.screenshot(path=str(shots / "rating.png"), full_page=True)
            page.keyboard.press("6")
            wait_done(6)
            # 6. rules: click "no" for the first, key y for the next open rule, Enter
            page.screenshot(path=str(shots / "rules.png"), full_page=True)
            page.click("tr.rule:nth-child(1) input[value=no]")
            page.keyboard.press("y")
            page.keyboard.press("Enter")
            wait_done(7)
            assert "All done" in page.inner_text("main")
            # undo (key z) brings the rules item back
            page.keyboard.press("z")
            wait_done(6)
            assert page.is_visible("#rules")
            page.goto(f"http://127.0.0.1:{port}/stats/{admin}")
            assert "Feedback statistics" in page.inner_text("h1")
            page.screenshot(path=str(shots / "stats.png"), full_page=True)
            browser.close()
    finally:
        stop(server)
    assert dialogs == []  # no injected script ran
    assert not [e for e in errors if "Content Security Policy" in e]  # the page needs nothing the CSP forbids

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT s.task, s.answer, s.comment, s.undone, i.responses FROM submissions s "
                        "JOIN items i ON i.id = s.item_id ORDER BY s.id").fetchall()
    assert [(r[0], r[3]) for r in rows] == [("pairwise", 0), ("pairwise", 0), ("ranking", 0), ("ranking", 0),
                                            ("correction", 0), ("rating", 0), ("rules", 1)]
    answers = [json.loads(r[1]) for r in rows]
    responses = [json.loads(r[4]) for r in rows]
    assert responses[0][answers[0]["winner"]] == left_text and answers[0]["strength"] == "clearly"
    assert rows[0][2] == "the left one answers the question"
    assert responses[1][answers[1]["winner"]] == right_text and answers[1]["strength"] is None
    assert [responses[2][i] for i in answers[2]["order"]] == ranked
    assert [responses[3][i] for i in answers[3]["order"]] == dragged_order
    assert responses[4][answers[4]["better"]] == picked and answers[4]["corrected"] == "The capital is Canberra, founded in 1913."
    assert answers[5] == {"rating": 6}
    assert answers[6] == {"answers": {"Reveals private details about a real person.": "no",
                                      "Refuses or lectures about a harmless request.": "yes"}}
