"""The web UI: its routes on their own (options table, inspect, security headers, origin checks),
then the pages in a real headless Chromium against a real HTTP server on a free loopback port
(tiny models; one slow test on smollm2). Screenshots of each page go to the test's tmp folder."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

import oficina
import ui_helpers as u
from oficina import inspect
from oficina.options import PARAMS
from oficina.ui import STATIC, routes


@pytest.fixture(scope="module")
def ui_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("uihome") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFICINA_HOME", str(home))
        u.registry_with_tiny_models(home)
        yield home


@pytest.fixture(scope="module")
def client(ui_home):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.include_router(routes.router())
    with TestClient(app) as c:
        yield c


# -- routes ---------------------------------------------------------------------------------------

def test_options_route_is_the_options_table(client):
    d = client.get("/api/options").json()
    assert [r["name"] for r in d["options"]] == [p.name for p in PARAMS]
    rows = {r["name"]: r for r in d["options"]}
    for p in PARAMS:
        r = rows[p.name]
        assert r["default"] == (list(p.default) if p.type is list else p.default)
        assert r["valid"] == p.valid_text and r["help"] == p.help
        for edge in (r["min"], r["max"]):  # the advertised bounds are the validator's bounds
            if edge is not None:
                assert p.valid(edge) != (edge == r["min"] and r["min_exclusive"])
    assert rows["top_p"]["min"] == 0 and rows["top_p"]["max"] == 1
    assert rows["repeat_penalty"]["min_exclusive"] and rows["temperature"]["typical"] == [0, 2]
    assert "temperature" in d["sampling"] and "num_ctx" not in d["sampling"]


def test_predict_route_gives_the_numbers_oficina_predict_gives(client, ui_home):
    body = {"model": "tiny", "text": "The sky is", "top": 5, "options": {"temperature": 0.5, "top_k": 7}}
    got = client.post("/api/inspect/predict", json=body).json()
    want = inspect.predict(oficina.load("tiny"), "The sky is", top=5, temperature=0.5, top_k=7).to_dict()
    assert got["kept"] == want["kept"] == 7
    assert [c["id"] for c in got["top"]] == [c["id"] for c in want["top"]]
    assert got["top"][0]["prob_after"] == pytest.approx(want["top"][0]["prob_after"], rel=1e-6)
    assert got["entropy_bits"] == pytest.approx(want["entropy_bits"], rel=1e-6)


def test_inspect_routes_answer_bad_input_with_one_line(client):
    cases = [({"model": "nope", "text": "x"}, 404, "not found"),
             ({"model": "tiny", "text": "x", "options": {"temperature": -1}}, 400, "temperature must be >= 0"),
             ({"model": "tiny", "text": "x", "options": {"bogus": 1}}, 400, "unknown parameter"),
             ({"model": "tiny", "text": ""}, 400, "non-empty"),
             ({"model": "tiny", "text": "x" * 20_001}, 400, "limit"),
             ({"text": "x"}, 400, "'model'")]
    for body, status, words in cases:
        r = client.post("/api/inspect/predict", json=body)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
        assert "\n" not in r.json()["error"] and "Traceback" not in r.text
    r = client.post("/api/inspect/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/inspect/attention", json={"model": "tiny", "text": "o gato", "layer": 9})
    assert r.status_code == 400 and "layer 9 is out of range" in r.json()["error"]


def test_attention_and_similarity_routes(client):
    a = client.post("/api/inspect/attention", json={"model": "tiny", "text": "o gato dorme", "head": 2}).json()
    n = len(a["tokens"])
    assert a["heads"] == 4 and a["head"] == 2 and len(a["weights"]) == n
    assert all(abs(sum(row) - 1) < 1e-4 for row in a["weights"])  # softmax rows
    assert all(a["weights"][i][j] == 0 for i in range(n) for j in range(i + 1, n))  # causal
    s = client.post("/api/inspect/similarity", json={"model": "tiny", "texts": ["a cat", "a dog", "a cat"]}).json()
    m = s["matrix"]
    assert m[0][2] == pytest.approx(1) and m[0][1] == pytest.approx(m[1][0]) and m[0][1] < 0.9999
    direct = inspect.similarity(oficina.load("tiny"), "a cat", "a dog").cosine
    assert m[0][1] == pytest.approx(direct, abs=1e-6)


def test_state_changing_routes_refuse_other_origins(client):
    body = {"model": "tiny", "text": "x"}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = client.post("/api/inspect/tokenize", json=body, headers=headers)
        assert r.status_code == 403, headers
    r = client.post("/api/ui/rollback", json={"name": "tiny"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    ok = client.post("/api/inspect/tokenize", json=body, headers={"Origin": "http://testserver",
                                                                   "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200


def test_static_files_strict_csp_no_inline_script_no_traversal(client):
    r = client.get("/ui/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", r.text, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son\w+=", r.text)  # no inline event handlers
    assert client.get("/ui", follow_redirects=False).text == r.text == client.get("/ui/chat").text
    assert client.get("/ui/js/app.js").headers["content-type"].startswith("text/javascript")
    for bad in ("/ui/../routes.py", "/ui/%2e%2e/routes.py", "/ui/js/../../routes.py", "/ui/nope.js"):
        assert client.get(bad).status_code == 404, bad


def test_ui_is_small_and_never_writes_markup_from_data():
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    for p in files:
        if p.suffix == ".js":
            text = p.read_text()
            for sink in (r"\.(inner|outer)HTML\b", r"insertAdjacentHTML\(", r"document\.write",
                         r"\beval\(", r"new Function\(", r"setAttribute\(\s*[\"']on"):
                assert not re.search(sink, text), f"{p.name} uses {sink}"


def test_lineage_follows_parents_across_names(client, ui_home):
    from oficina.registry.registry import Registry

    reg = Registry(ui_home)
    base = reg.get("tiny")
    reg.add("tiny-lora", base.manifest, parent=base.ref, producer={"op": "tune", "method": "lora"})
    lora = reg.add("tiny-lora", base.manifest, parent="tiny-lora:latest@1", producer={"op": "merge"})
    g = client.get("/api/ui/lineage", params={"name": "tiny"}).json()
    refs = [n["ref"] for n in g["nodes"]]
    assert {"tiny:latest@1", "tiny-lora:latest@1", lora.ref} <= set(refs)
    assert ["tiny:latest@1", "tiny-lora:latest@1"] in g["edges"]
    r = client.post("/api/ui/rollback", json={"name": "tiny-lora"})
    assert r.json()["current"] == "tiny-lora:latest@1" and reg.get("tiny-lora").version == 1
    assert client.get("/api/ui/lineage", params={"name": "ghost"}).status_code == 404
    reg.remove("tiny-lora")


def test_arena_votes_add_up_per_pair_with_a_wilson_interval(client):
    from oficina.ui.arena import wilson

    lo, hi = wilson(8, 10)  # the textbook case: 8 of 10, 95% -> 0.490 .. 0.943
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(5, 5)[1] == 1.0
    vote = {"prompt": "2+2?", "answers": ["4", "5"]}
    for a, b, winner in [("m1", "m2", "a"), ("m2", "m1", "b"), ("m1", "m2", "tie"), ("m2", "m1", "a")]:
        r = client.post("/api/ui/arena/vote", json={**vote, "a": a, "b": b, "winner": winner})
        assert r.status_code == 200, r.text
    pair = next(p for p in client.get("/api/ui/arena").json()["pairs"] if p["first"] == "m1")
    assert (pair["wins"], pair["losses"], pair["ties"]) == (2, 1, 1)  # A-vs-B and B-vs-A add up
    assert pair["win_rate"] == pytest.approx(2.5 / 4) and pair["interval"] == pytest.approx(list(wilson(2.5, 4)))
    bad = client.post("/api/ui/arena/vote", json={**vote, "a": "m1", "b": "m2", "winner": "both"})
    assert bad.status_code == 400 and "winner" in bad.json()["error"]
    lines = client.get("/api/ui/arena/export", params={"format": "pairs"}).text.splitlines()
    assert json.loads(lines[0]) == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def test_runs_route_reads_the_loss_history(client, ui_home):
    state = ui_home / "runs" / "tune-tiny" / "checkpoints" / "step-00000004"
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"step": 4, "total_steps": 8, "epoch": 0, "history": [
        {"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.5}], "val_history": [{"step": 4, "loss": 2.7}]}))
    runs = client.get("/api/ui/runs").json()["runs"]
    assert runs[0]["name"] == "tune-tiny" and [h["loss"] for h in runs[0]["history"]] == [3.0, 2.5]
    assert runs[0]["val_history"][0]["loss"] == 2.7 and runs[0]["total_steps"] == 8


# -- the pages in a real browser --------------------------------------------------------------------

needs_browser = pytest.mark.skipif(not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
                                   reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(ui_home, shots):
    with u.Server(u.serve_app(ui_home)) as server:
        driver = u.chromium(shots.parent / "downloads")
        driver.downloads = shots.parent / "downloads"
        driver.base = server.url
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver, condition, timeout=30, what="condition"):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = condition(driver)
            if got:
                return got
        except (NoSuchElementException, StaleElementReferenceException):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def css(driver, sel):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, sel)


def open_page(driver, page):
    driver.get("about:blank")  # a fresh page even when only the #fragment differs
    driver.get(f"{driver.base}/ui/#{page}")
    wait(driver, lambda d: css(d, "main h1"), what=f"{page} to render")


def choose(driver, role, value, index=0):
    from selenium.webdriver.support.ui import Select

    Select(css(driver, f"select[data-role={role}]")[index]).select_by_value(value)


def no_console_errors(driver):
    errors = [l["message"] for l in driver.get_log("browser") if l["level"] == "SEVERE"]
    assert not errors, errors


def send_chat(driver, model, text, timeout=30):
    choose(driver, "model", model)
    box = css(driver, "form.ask textarea")[0]
    box.send_keys(text)
    # Record every text the answer shows while it streams (before the last line arrives).
    driver.execute_script("""
      window.seen = [];
      new MutationObserver(() => { const a = document.querySelector('.msg.assistant:last-child .text');
        if (a) window.seen.push(a.textContent.length); })
        .observe(document.querySelector('.messages'), {subtree: true, childList: true, characterData: true});""")
    before = len(css(driver, ".msg.assistant[data-done]"))
    css(driver, "form.ask button[type=submit]")[0].click()
    return wait(driver, lambda d: css(d, ".msg.assistant[data-done]")[before:], timeout, "the answer to finish")[-1]


@needs_browser
def test_chat_streams_an_answer_with_stats(browser, shots):
    open_page(browser, "chat")
    num = wait(browser, lambda d: css(d, ".opt[data-name=num_predict] input[type=number]"))[0]
    num.clear()
    num.send_keys("12")
    answer = send_chat(browser, "tiny:latest", "Hello there")
    text = answer.find_element("css selector", ".text").text
    stats = answer.find_element("css selector", ".stats").text
    assert text and "tokens/s" in stats and "answer 12 tokens" in stats and "finished: length" in stats
    lengths = browser.execute_script("return window.seen")
    assert len(set(lengths)) >= 2, lengths  # drawn piece by piece, not at the end
    browser.save_screenshot(str(shots / "chat.png"))
    no_console_errors(browser)


@needs_browser
def test_chat_sends_a_library_prompt_and_the_log_names_its_version(browser, ui_home):
    from oficina.prompts import PromptStore
    from oficina.prompts.spec import parse
    from oficina.serve.convlog import ConvLog, default_path

    store = PromptStore(ui_home)
    stored, _ = store.add("greet", parse("template: 'Say hello to {{ who }}.'\n"
                                         "variables: {who: {description: a name}}\n"))
    store.label("greet", "production", stored.version)
    open_page(browser, "chat")
    choose(browser, "prompt", "greet:production")
    box = wait(browser, lambda d: css(d, "input[data-var=who]"), what="the variable's field")[0]
    box.send_keys("Ana")
    set_option(browser, "num_predict", 4)
    answer = send_chat(browser, "tiny:latest", "")
    user = css(browser, ".msg.user .text")[-1].text
    assert user == "Say hello to Ana." and answer.get_attribute("data-done")
    entry = ConvLog(default_path(ui_home)).find(limit=1)[0]
    assert entry.extra.get("prompt") == "greet@1" and entry.prompt_text() == "Say hello to Ana."
    no_console_errors(browser)


def set_option(driver, name, value):
    from selenium.webdriver.common.keys import Keys

    box = wait(driver, lambda d: css(d, f".opt[data-name={name}] input[type=number]"))[0]
    box.send_keys(Keys.CONTROL, "a")  # modifiers are held until the end of one send_keys call
    box.send_keys(Keys.BACKSPACE, str(value))


@needs_browser
def test_chat_shows_cache_hits_and_truncation(browser):
    open_page(browser, "chat")
    set_option(browser, "temperature", 0)
    set_option(browser, "num_predict", 4)
    new_chat = next(b for b in css(browser, "button") if b.text == "New chat")
    first = send_chat(browser, "tiny:latest", "Once more, please.").text
    new_chat.click()
    again = send_chat(browser, "tiny:latest", "Once more, please.").text
    assert "cache miss" in first and "cache hit" in again, (first, again)
    new_chat.click()
    set_option(browser, "num_ctx", 16)
    long = send_chat(browser, "tiny:latest", "The cat sat on the sofa while the dog slept. " * 4)
    notice = long.find_element("css selector", ".notice").text
    assert notice.startswith("The prompt was truncated") and "num_ctx" in notice


@needs_browser
def test_model_answer_with_markup_is_shown_as_text_and_runs_nothing(browser, shots):
    open_page(browser, "chat")
    num = wait(browser, lambda d: css(d, ".opt[data-name=num_predict] input[type=number]"))[0]
    num.clear()
    num.send_keys("2")
    answer = send_chat(browser, "xss:latest", "Say something")
    assert answer.find_element("css selector", ".text").text == u.XSS * 2
    assert browser.execute_script("return window.pwned") is None
    assert not css(browser, "main script, main img, .messages *[onerror]")
    time.sleep(0.5)  # an <img onerror> would have fired by now
    assert browser.execute_script("return window.pwned") is None
    browser.save_screenshot(str(shots / "chat-xss.png"))


@needs_browser
def test_playground_redraws_when_temperature_moves(browser, shots):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, "playground")
    choose(browser, "model", "tiny:latest")
    summary = wait(browser, lambda d: [s for s in css(d, "p.summary") if s.get_attribute("data-model") == "tiny:latest"])[0]
    before = [float(b.get_attribute("data-prob-after")) for b in css(browser, ".bars .bar")]
    tiny_model = oficina.load("tiny")
    kept = {t: str(inspect.predict(tiny_model, "The sky is", temperature=t).kept) for t in (0.8, 2.0)}
    assert summary.get_attribute("data-kept") == kept[0.8]  # what `oficina predict` says
    temp = css(browser, ".opt[data-name=temperature] input[type=number]")[0]
    temp.send_keys(Keys.CONTROL, "a")  # modifiers are held until the end of one send_keys call
    temp.send_keys(Keys.BACKSPACE, "0")  # greedy
    wait(browser, lambda d: css(d, "p.summary")[0].get_attribute("data-kept") == "1", what="greedy redraw")
    after = [float(b.get_attribute("data-prob-after")) for b in css(browser, ".bars .bar")]
    assert after[0] == 1.0 and after != before and sum(after) == 1.0
    slider = css(browser, ".opt[data-name=temperature] input[type=range]")[0]
    slider.send_keys(Keys.END)  # keyboard on the slider: temperature 2
    wait(browser, lambda d: css(d, "p.summary")[0].get_attribute("data-kept") == kept[2.0], what="temperature 2 redraw")
    hot = [float(b.get_attribute("data-prob-after")) for b in css(browser, ".bars .bar")]
    assert max(hot) < max(before)  # a higher temperature flattens the distribution
    first = css(browser, ".bars .bar")[0]
    token = first.get_attribute("data-token")
    first.click()
    wait(browser, lambda d: d.find_element("css selector", "input[data-role=prompt]").get_attribute("value") == "The sky is" + token)
    browser.save_screenshot(str(shots / "playground.png"))
    no_console_errors(browser)


@needs_browser
def test_attention_page_draws_the_heat_map(browser, shots):
    open_page(browser, "inside/attention")
    svg = wait(browser, lambda d: css(d, "svg.heatmap"), what="the heat map")[0]
    n = len(inspect.tokenize(oficina.load("tiny"), "o gato estava dormindo no sofá").tokens)
    assert len(svg.find_elements("css selector", "rect.cell")) == n * n
    mean = [r.get_attribute("fill") for r in svg.find_elements("css selector", "rect.cell")]
    choose(browser, "head", "0")
    wait(browser, lambda d: [r.get_attribute("fill") for r in css(d, "svg.heatmap rect.cell")] != mean, what="head 0")
    choose(browser, "layer", "0")
    wait(browser, lambda d: "layer 0 of 0..1" in d.find_element("css selector", "main section").text)
    browser.save_screenshot(str(shots / "attention.png"))
    for tab in ("tokens", "similarity", "card"):
        open_page(browser, f"inside/{tab}")
        target = {"tokens": ".tokens .tk", "similarity": "svg.heatmap", "card": "svg.histogram"}[tab]
        wait(browser, lambda d, target=target: css(d, target), what=tab)
        browser.save_screenshot(str(shots / f"inside-{tab}.png"))
    no_console_errors(browser)


@needs_browser
def test_models_runs_and_monitor_pages(browser, shots):
    open_page(browser, "models")
    wait(browser, lambda d: css(d, "main table button"))[0].click()
    wait(browser, lambda d: css(d, "svg.graph g.node"), what="lineage graph")
    browser.save_screenshot(str(shots / "models.png"))
    from oficina.registry.registry import Registry

    reg = Registry(os.environ["OFICINA_HOME"])
    reg.set_metrics(reg.get("tiny"), {"wikitext": {"perplexity": 812.5}})  # as `oficina eval` records
    open_page(browser, "runs")
    wait(browser, lambda d: css(d, "svg.lines polyline"), what="loss curve")
    assert "tiny:latest@1" in wait(browser, lambda d: css(d, "svg.evalbars"), what="eval chart")[0].text
    assert "812.5" in browser.find_element("css selector", "main table").text
    browser.save_screenshot(str(shots / "runs.png"))
    open_page(browser, "chat")  # one request for the log and the metrics to show
    set_option(browser, "num_predict", 2)
    send_chat(browser, "tiny:latest", "Hi")
    open_page(browser, "monitor")
    wait(browser, lambda d: "tiny:latest" in d.find_element("css selector", "main").text, what="stats by model")
    wait(browser, lambda d: "time_to_first_token" in d.find_element("css selector", "main").text, what="/metrics")
    browser.save_screenshot(str(shots / "monitor.png"))


@needs_browser
def test_rate_an_answer_and_find_it_in_the_export(browser, shots):
    from selenium.webdriver.support.ui import Select

    open_page(browser, "chat")
    send_chat(browser, "tiny:latest", "Which colour is the sky?")
    open_page(browser, "logs")
    row = wait(browser, lambda d: [r for r in css(d, "main table tbody tr") if "Which colour is the sky?" in r.text],
               what="the chat in the log")[0]
    row.find_element("css selector", "button").click()
    form = wait(browser, lambda d: css(d, "form.rate"))[0]
    Select(form.find_element("css selector", "select")).select_by_value("bad")
    form.find_element("css selector", "textarea").send_keys("Blue, on a clear day.")
    Select(form.find_element("css selector", "select[data-score=fluency]")).select_by_value("2")
    Select(form.find_element("css selector", "select[data-score=factuality]")).select_by_value("1")
    form.find_element("css selector", "button[type=submit]").click()
    wait(browser, lambda d: "fluency 2/5, factuality 1/5" in d.find_element("css selector", "form.rate").text, what="the saved rating")
    browser.save_screenshot(str(shots / "logs.png"))
    next(b for b in css(browser, "button") if b.text == "Chat records for oficina tune").click()
    path = browser.downloads / "oficina-chat.jsonl"
    wait(browser, lambda d: path.is_file() and path.read_text().strip(), what="the exported file")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {"role": "assistant", "content": "Blue, on a clear day."} in records[-1]["messages"]
    assert {"role": "user", "content": "Which colour is the sky?"} in records[-1]["messages"]
    from oficina.tuning import data  # the reader `oficina tune` uses

    assert data.read(path).shape == "chat"


@needs_browser
def test_arena_round_blind_vote_and_export(browser, shots):
    open_page(browser, "arena")
    choose(browser, "model", "tiny:latest", 0)
    choose(browser, "model", "xss:latest", 1)
    num = css(browser, ".opt[data-name=num_predict] input[type=number]")[0]
    num.clear()
    num.send_keys("3")
    next(b for b in css(browser, "button") if b.text == "Ask both").click()
    wait(browser, lambda d: css(d, ".pair .msg"), what="both answers")
    labels = [e.text for e in css(browser, ".pair .who")]
    assert labels == ["ANSWER 1", "ANSWER 2"]  # blind: no model names until the vote
    texts = [e.text for e in css(browser, ".pair .text")]
    winner = 0 if texts[0] == u.XSS * 3 else 1
    next(b for b in css(browser, "button") if b.text == f"Answer {winner + 1} is better").click()
    wait(browser, lambda d: "xss:latest" in css(d, ".pair .who")[winner].text.lower(), what="the reveal")
    rows = wait(browser, lambda d: [r.text for r in css(d, "main table tbody tr") if "tiny:latest" in r.text])
    assert rows[0].startswith("tiny:latest xss:latest 0 1 0 0%")  # xss won its one vote
    next(b for b in css(browser, "button") if b.text == "Export preference pairs (dpo)").click()
    path = browser.downloads / "arena-pairs.jsonl"
    wait(browser, lambda d: path.is_file() and path.read_text().strip(), what="the exported pairs")
    pair = json.loads(path.read_text().splitlines()[-1])
    assert pair["chosen"] == u.XSS * 3 and pair["rejected"] != pair["chosen"]
    from oficina.tuning import data  # the reader `oficina dpo` uses

    assert data.read(path).shape == "preference"
    browser.save_screenshot(str(shots / "arena.png"))


@needs_browser
@pytest.mark.slow
@pytest.mark.real
def test_smollm2_chat_in_the_browser(real_registry, shots, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFICINA_HOME", str(real_registry.home))
        # The shared registry of real models gets no log or cache of ours: those go to tmp_path.
        with u.Server(u.serve_app(real_registry.home, tmp_path)) as server:
            d = u.chromium(tmp_path)
            d.base = server.url
            try:
                open_page(d, "chat")
                set_option(d, "num_predict", 24)
                set_option(d, "temperature", 0)  # greedy: the same answer every run
                answer = send_chat(d, "smollm2:latest", "What color is the sky on a clear day?", timeout=300)
                text = answer.find_element("css selector", ".text").text
                assert re.search(r"blue", text, re.I), text
                assert len(set(d.execute_script("return window.seen"))) >= 3
                d.save_screenshot(str(shots / "chat-smollm2.png"))
            finally:
                d.quit()


@pytest.mark.slow  # a fresh `oficina serve` process imports torch: tens of seconds on a busy machine
def test_oficina_ui_starts_the_server_and_prints_the_address(ui_home, tmp_path):
    """`oficina ui` on a free port: starts `oficina serve` in the background, waits for it, prints
    the page's address; a second call finds it running and starts nothing."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    port = u.free_port()
    env = {**os.environ, "OFICINA_HOME": str(ui_home)}
    cmd = [sys.executable, "-m", "oficina", "ui", "--port", str(port), "--no-browser"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    pid = int(re.search(r"pid (\d+)", first.stdout).group(1)) if "pid" in first.stdout else None
    try:
        assert first.returncode == 0, first.stderr
        assert f"started oficina serve on 127.0.0.1:{port}" in first.stdout
        assert first.stdout.strip().endswith(f"http://127.0.0.1:{port}/ui/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/", timeout=10) as r:
            assert "Content-Security-Policy" in r.headers and b"/ui/js/app.js" in r.read()
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "started" not in again.stdout
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)


def test_ui_routes_carry_the_api_key_scopes(ui_home):
    """In serve's route table, with keys configured: the page itself is public, the rest needs a
    key of the route's scope (read < inference < admin)."""
    from fastapi.testclient import TestClient

    from oficina.serve.app import create_app
    from oficina.serve.auth import Key, Policy, digest
    from oficina.serve.native import Server
    from oficina.serve.pool import Pool

    keys = [Key(s, digest(f"key-{s}"), s) for s in ("read", "inference", "admin")]
    app = create_app(Server(Pool(ui_home)), Policy("127.0.0.1", keys))
    calls = {"GET /ui/": "public", "GET /api/options": "read", "GET /api/ui/models": "read",
             "POST /api/inspect/tokenize": "inference", "POST /api/ui/rollback": "admin",
             "GET /api/ui/logs": "admin", "GET /api/ui/logs/export": "admin"}
    order = ["public", "read", "inference", "admin"]
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for call, scope in calls.items():
            method, path = call.split()
            for key in (None, "read", "inference", "admin"):
                headers = {"Authorization": f"Bearer key-{key}"} if key else {}
                r = c.request(method, path, headers=headers, json={"model": "tiny", "text": "x", "name": "nope"})
                allowed = order.index(scope) <= order.index(key or "public")
                assert (r.status_code not in (401, 403)) == allowed, (call, key, r.status_code, r.text)


@needs_browser
def test_pages_send_the_api_key_typed_in_the_header(ui_home, browser):
    from oficina.serve.app import create_app
    from oficina.serve.auth import Key, Policy, digest
    from oficina.serve.native import Server
    from oficina.serve.pool import Pool

    app = create_app(Server(Pool(ui_home)), Policy("127.0.0.1", [Key("me", digest("s3cret"), "inference")]))
    with u.Server(app) as server:
        browser.get("about:blank")
        browser.get(f"{server.url}/ui/#playground")
        wait(browser, lambda d: "401" in d.find_element("css selector", "main").text
             or "key" in d.find_element("css selector", "main").text.lower(), what="the refusal without a key")
        box = css(browser, "#api-key")[0]
        box.send_keys("s3cret")
        box.send_keys("\n")
        browser.execute_script("document.getElementById('api-key').dispatchEvent(new Event('change'))")
        wait(browser, lambda d: [s for s in css(d, "p.summary") if s.get_attribute("data-kept")], what="the playground with the key")
        browser.execute_script("sessionStorage.clear()")
