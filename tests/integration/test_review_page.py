"""The review page in a real headless Chromium (Debian's chromium and chromedriver, driven by
Selenium), and a run with people as judges through the CLI: it stops with exit 8, judgments
arrive through the page and an imported file, and the rerun completes, a kill included."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from alignloop.loop.config import validate_config
from alignloop.loop.review_queue import WaitingForJudgments
from tests.conftest import tiny_config, write_prompts
from tests.helpers import ROOT, run_cli, run_in_process, state_of, wait_for, write_config

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = os.environ.get("ALIGNLOOP_REVIEW_SCREENSHOT")  # where to keep the page's picture (docs/review.png)


def review_page(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """`alignloop review RUN_DIR` as a user starts it, and the address it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignloop.loop.cli", "review", str(run_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("review page: http://127.0.0.1:"), line + proc.stdout.read()
    return proc, line.split(": ", 1)[1].strip()


def post(url: str, body: dict) -> dict:
    base, token = url.split("/?token=")
    request = urllib.request.Request(
        f"{base}/api/judgments?token={token}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def queued(run_dir: Path, i: int = 1) -> list[dict]:
    """The queue of iteration i as the page lists it: sample id and response."""
    d = run_dir / f"iter-{i:04d}"
    responses = {json.loads(line)["id"]: json.loads(line)["response"] for line in (d / "samples.jsonl").open()}
    ids = json.loads((d / "review" / "queue.json").read_text())["sample_ids"]
    return [{"sample_id": sid, "response": responses[sid]} for sid in ids]


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="needs Debian's chromium and chromium-driver (make browser)"
)
def test_people_judge_in_a_real_browser_and_cut_learns_their_spans(tmp_path, tiny_model):
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    raw = tiny_config(
        tiny_model,
        write_prompts(tmp_path / "p.jsonl"),
        tmp_path / "run",
        iterations=1,
        judge={"type": "human"},
        judging={"actors": 1},
        sampler={"replicas": 1},
        tracking={"backends": []},
    )
    raw["learner"]["objective"] = {"type": "cut", "detection": "spans"}
    cfg = validate_config(raw)
    with pytest.raises(WaitingForJudgments):
        run_in_process(cfg)
    run_dir = tmp_path / "run"
    queue = queued(run_dir)
    marked = next(k for k, item in enumerate(queue) if len(item["response"]) >= 3)  # a response with text to select

    server, url = review_page(run_dir)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    wait = WebDriverWait(driver, 60)

    def press(*keys: str, save: bool = False) -> None:
        chain = ActionChains(driver).send_keys(*keys)
        if save:
            chain = chain.key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL)
        chain.perform()

    try:
        driver.get(url.split("?")[0])  # without the token: refused
        assert "403" in driver.find_element(By.TAG_NAME, "body").text
        driver.get(url + "&reviewer=ann")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#list li")) == len(queue))

        def judged() -> str:
            return driver.find_element(By.ID, "progress").text

        # The first response with text: select its first three characters, mark them, write a critique.
        for _ in range(marked):
            press("j")
        wait.until(lambda d: queue[marked]["sample_id"] in d.find_element(By.ID, "sample-id").text, driver.page_source)
        driver.execute_script(
            "const t = document.getElementById('response').firstChild, r = document.createRange();"
            "r.setStart(t, 0); r.setEnd(t, 3); getSelection().removeAllRanges(); getSelection().addRange(r);"
        )
        press("m")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#response mark"))
        driver.find_element(By.ID, "critique").send_keys("It starts wrong.", Keys.ESCAPE)
        press("n", "1", save=True)
        wait.until(lambda d: judged().startswith("1 of"))
        for n in (2, 3):  # two fast passes: positive, score 1, save; the page moves on to the next open one
            press("p", "5", save=True)
            wait.until(lambda d, n=n: judged().startswith(f"{n} of"))

        driver.refresh()  # what was saved is there after a reload
        wait.until(lambda d: judged() == f"3 of {len(queue)} judged")
        items = driver.find_elements(By.CSS_SELECTOR, "#list li")
        assert sum("negative" in li.get_attribute("class") for li in items) == 1
        assert sum("positive" in li.get_attribute("class") for li in items) == 2
        items[marked].click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#response mark").text == queue[marked]["response"][:3])
        assert driver.find_element(By.ID, "critique").get_attribute("value") == "It starts wrong."
        assert "saved by ann" in driver.find_element(By.ID, "sample-id").text
        if SCREENSHOT:
            driver.save_screenshot(SCREENSHOT)
    finally:
        driver.quit()

    # The rest through the page's API, positive: the one negative is the browser's.
    from alignloop.loop.review_queue import ReviewQueue

    saved = ReviewQueue(run_dir / "iter-0001").saved()
    assert saved[queue[marked]["sample_id"]]["judgment"]["spans"] == [{"start": 0, "end": 3, "reason": ""}]
    for item in queue:
        if item["sample_id"] not in saved:
            post(url, {"queue": "iter-0001", "sample_id": item["sample_id"], "reviewer": "bob", "verdict": "positive"})
    server.terminate()
    server.wait(timeout=60)

    metrics = run_in_process(cfg)[-1]
    assert metrics["n_judged_by_people"] == len(queue) and metrics["n_negative"] == 1
    assert metrics["cut_negatives_with_spans"] == 1.0  # the span the browser marked reached the learner's tokens
    judgments = [json.loads(line) for line in (run_dir / "iter-0001" / "judgments.jsonl").open()]
    assert {j["judge"] for j in judgments} == {"human:ann", "human:bob"}


def test_a_run_waits_collects_from_the_page_and_a_file_and_survives_a_kill(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, "run", iterations=1, judge={"type": "human"}, tracking={"backends": []})
    run_dir = tmp_path / "run"
    first = run_cli("run", str(config), timeout=600)
    assert first.returncode == 8, first.stdout + first.stderr
    assert "waiting: 12 of 12 queued sample(s) wait" in first.stderr and str(run_dir / "iter-0001") in first.stderr
    assert state_of(run_dir) == (1, "sample")
    queue = queued(run_dir)

    # Half through an imported file (an annotation tool's export), half through the page.
    export = tmp_path / "export.jsonl"
    lines = [{"sample_id": q["sample_id"], "verdict": "negative", "critique": "Too short."} for q in queue[:6]]
    export.write_text("".join(json.dumps(x) + "\n" for x in lines))
    imported = run_cli("review", str(run_dir), "--import", str(export), "--reviewer", "tool")
    assert imported.returncode == 0 and "imported 6 judgment(s)" in imported.stdout, imported.stderr
    server, url = review_page(run_dir)
    try:
        for q in queue[6:]:
            post(url, {"queue": "iter-0001", "sample_id": q["sample_id"], "reviewer": "ann", "score": 0.5})
    finally:
        server.terminate()
        server.wait(timeout=60)

    # Killed once people's judgments are collected and saved, before the learner's step ends.
    from tests.helpers import alignloop

    proc = alignloop("run", str(config), "--resume")
    wait_for(lambda: (run_dir / "iter-0001" / "judgments.jsonl").exists(), proc, timeout=600)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run was killed before it finished"
    done = run_cli("run", str(config), "--resume", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    judgments = [json.loads(line) for line in (run_dir / "iter-0001" / "judgments.jsonl").open()]
    assert [j["sample_id"] for j in judgments] == [
        json.loads(s)["id"] for s in (run_dir / "iter-0001" / "samples.jsonl").open()
    ]
    by_judge = {}
    for j in judgments:
        by_judge.setdefault(j["judge"], []).append(j)
    assert len(by_judge["human:tool"]) == 6 and len(by_judge["human:ann"]) == 6
    assert all(j["critique"] == "Too short." and j["verdict"] == "negative" for j in by_judge["human:tool"])
    assert json.loads((run_dir / "iter-0001" / "metrics.json").read_text())["n_judged_by_people"] == 12


def test_a_nightly_round_waits_for_people_and_the_same_command_finishes_it(tmp_path, tiny_model):
    from tests.integration.test_rounds import nightly, prompt_file, round_

    data = prompt_file(tmp_path / "night" / "prompts.jsonl", "n")
    config = nightly(tmp_path, tiny_model, "series", str(data), judge={"type": "human"}, tracking={"backends": []})
    code, out, summary = round_(config, "r1")
    assert code == 8 and summary["code"] == 8, out
    assert "waiting: 12 of 12 queued sample(s) wait" in out and "alignloop review" in out
    series = tmp_path / "series"
    queue = queued(series / "rounds" / "r1")
    export = tmp_path / "export.jsonl"
    export.write_text("".join(json.dumps({"sample_id": q["sample_id"], "score": 1.0}) + "\n" for q in queue))
    imported = run_cli("review", str(series), "--import", str(export), "--reviewer", "night-shift")
    assert imported.returncode == 0 and "imported 12 judgment(s)" in imported.stdout, imported.stderr
    code, out, summary = round_(config, "r1")
    assert code == 0 and summary["code"] == 0, out
    judgments = (series / "rounds" / "r1" / "iter-0001" / "judgments.jsonl").read_text().splitlines()
    assert {json.loads(line)["judge"] for line in judgments} == {"human:night-shift"} and len(judgments) == 12
