"""The conversation log, its review CLI (`oficina logs`), the export into training data that the
real `tune` and `dpo` read, and `oficina stats` on a seeded log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from oficina.cli import main
from oficina.errors import OficinaError
from oficina.serve import convlog
from oficina.serve.convlog import ConvLog, Entry


def _entry(prompt: str, output: str, model: str = "tiny:latest", **kw) -> Entry:
    values = dict(route="/api/chat", model=model, messages=[{"role": "user", "content": prompt}],
                  output=output, digest="sha256:" + "ab" * 32, finish="stop", prompt_tokens=10,
                  output_tokens=5, ttft_s=0.1, total_s=0.5, cost=0.001)
    values.update(kw)
    return Entry(**values)


@pytest.fixture
def log(home) -> ConvLog:
    return ConvLog(convlog.default_path())


def test_entries_round_trip_and_every_filter_selects(log):
    now = time.time()
    a = log.record(_entry("What is the capital of France?", "Paris.", created=now - 7200))
    b = log.record(_entry("Tell me about cats", "Cats purr.", model="other:latest", total_s=3.0))
    c = log.record(_entry("broken", "", finish="error", error="upstream unreachable"))
    assert [e.id for e in log.find()] == [c, b, a]
    got = log.get(a)
    assert got.messages == [{"role": "user", "content": "What is the capital of France?"}]
    assert got.output == "Paris." and got.ttft_s == 0.1 and got.digest.startswith("sha256:")
    assert [e.id for e in log.find(model="other")] == [b]
    assert [e.id for e in log.find(text="capital")] == [a]
    assert [e.id for e in log.find(text="purr")] == [b]           # answers are searched too
    assert [e.id for e in log.find(text="50%")] == []             # LIKE wildcards are literal
    assert [e.id for e in log.find(slow=2.0)] == [b]
    assert [e.id for e in log.find(failed=True)] == [c]
    assert [e.id for e in log.find(since=now - 3600)] == [c, b]
    assert [e.id for e in log.find(until=now - 3600)] == [a]
    log.rate(a, "good", note="right")
    log.rate(b, "bad", better="Cats purr and sleep a lot.")
    assert [e.id for e in log.find(rated="good")] == [a]
    assert [e.id for e in log.find(rated="corrected")] == [b]
    assert [e.id for e in log.find(rated="none")] == [c]
    with pytest.raises(OficinaError, match="no log entry 99"):
        log.rate(99, "good")
    with pytest.raises(OficinaError, match="rating must be one of good, bad"):
        log.rate(a, "meh")


def test_redaction_and_retention(home):
    log = ConvLog(convlog.default_path(), redact=("email", "phone"))
    i = log.record(_entry("mail me at ana.silva@example.pt or +351 912 345 678", "I wrote to ana.silva@example.pt"))
    e = log.get(i)
    assert e.messages[0]["content"] == "mail me at [email] or [phone]" and e.output == "I wrote to [email]"
    full = ConvLog(convlog.default_path(), redact=("prompts",))
    e = full.get(full.record(_entry("my secret plan", "ok")))
    assert "secret" not in e.messages[0]["content"] and e.messages[0]["content"].startswith("[redacted 14 chars")
    with pytest.raises(OficinaError, match="unknown redaction 'names'"):
        ConvLog(convlog.default_path(), redact=("names",))
    full.record(_entry("old", "x", created=time.time() - 40 * 86400))
    kept = ConvLog(convlog.default_path(), retention_days=30)  # prunes on open
    assert "old" not in [x.prompt_text() for x in kept.find()] and kept.count() == 2


def test_a_locked_database_never_fails_a_request_and_drops_are_counted(log, monkeypatch):
    monkeypatch.setattr(convlog, "RETRY_SECONDS", 0.05)
    drops = []
    log.on_drop = drops.append
    blocker = sqlite3.connect(log.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")                         # another process holds the write lock
    assert log.record(_entry("while locked", "answer")) is None  # returned at once, no exception
    assert log.pending == 1
    monkeypatch.setattr(convlog, "MAX_PENDING", 1)
    assert log.record(_entry("second", "answer")) is None and log.dropped == 1 and drops == [1]
    blocker.execute("ROLLBACK")
    for _ in range(100):                                        # the retry thread writes it
        if log.pending == 0:
            break
        time.sleep(0.05)
    assert log.pending == 0 and [e.prompt_text() for e in log.find()] == ["while locked"]


def test_a_killed_process_loses_no_recorded_entry(home):
    script = textwrap.dedent(f"""
        import os, signal
        from oficina.serve.convlog import ConvLog, Entry
        log = ConvLog({str(home / 'logs.db')!r})
        for i in range(20):
            log.record(Entry(route="/api/generate", model="m", messages=[{{"role": "user", "content": str(i)}}],
                             output="answer"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    import oficina

    root = str(Path(oficina.__file__).parents[1])
    p = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == -signal.SIGKILL
    assert ConvLog(home / "logs.db").count() == 20


# -- the CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def reviewed(log) -> ConvLog:
    """A log as a reviewer leaves it: rated, corrected, a multi-turn chat, a failure."""
    ids = [log.record(_entry(f"Do you like the {w}?", f"I hate the {w}.")) for w in ("cat", "dog", "sun", "tree")]
    for i, w in zip(ids, ("cat", "dog", "sun", "tree")):
        log.rate(i, "bad", better=f"I like the {w}.")
    good = log.record(_entry("What is 2+2?", "4"))
    log.rate(good, "good")
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of Portugal?"}]
    multi = log.record(_entry("", "Lisbon.", messages=turns))
    log.rate(multi, "good")
    log.record(_entry("unrated", "whatever"))
    return log


def test_logs_list_search_show_rate_through_the_cli(reviewed, capsys):
    assert main(["logs", "list"]) == 0
    out = capsys.readouterr().out
    assert "Do you like the cat?" in out and "bad+fix" in out and "unrated" in out
    assert main(["logs", "search", "Portugal", "--json"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)
    assert hit["output"] == "Lisbon." and hit["rating"] == "good"
    assert main(["logs", "show", str(hit["id"])]) == 0
    out = capsys.readouterr().out
    assert "Be brief." in out and "Capital of Portugal?" in out and "Lisbon." in out
    unrated = reviewed.find(rated="none")[0].id
    assert main(["logs", "rate", str(unrated), "bad", "--note", "vague", "--better", "Something exact."]) == 0
    assert "rated bad with a corrected answer" in capsys.readouterr().out
    e = reviewed.get(unrated)
    assert (e.rating, e.note, e.better) == ("bad", "vague", "Something exact.")
    assert main(["logs", "list", "--rated", "none"]) == 0
    assert "no matching log entries" in capsys.readouterr().out
    assert main(["logs", "show", "999"]) == 1
    assert capsys.readouterr().err.strip() == "error: no log entry 999"
    assert main(["logs", "list", "--since", "yesterday-ish"]) == 1
    assert "cannot read time 'yesterday-ish'" in capsys.readouterr().err


def test_logs_without_a_log_and_an_empty_export_say_so(home, tmp_path, capsys):
    assert main(["logs", "list"]) == 1
    assert "no conversation log at" in capsys.readouterr().err
    log = ConvLog(convlog.default_path())
    log.record(_entry("unrated", "x"))
    assert main(["logs", "export", "-o", str(tmp_path / "out.jsonl")]) == 1
    assert "nothing to export: 0 matching log entries" in capsys.readouterr().err
    log.rate(1, "bad")
    assert main(["logs", "export", "-o", str(tmp_path / "out.jsonl")]) == 1
    assert "1 rated bad without a correction" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_export_writes_what_tune_and_dpo_read(reviewed, tmp_path, capsys):
    from oficina.align import pairs
    from oficina.tuning import data

    chat, prefs = tmp_path / "chat.jsonl", tmp_path / "prefs.jsonl"
    assert main(["logs", "export", "-o", str(chat)]) == 0
    assert "wrote 6 conversations" in capsys.readouterr().out   # 4 corrected, 2 good; not the unrated
    ds = data.read(chat)
    assert ds.shape == "chat" and len(ds) == 6
    assert ds.records[0].fields["messages"][-1] == {"role": "assistant", "content": "I like the cat."}
    assert ds.records[-1].fields["messages"][0] == {"role": "system", "content": "Be brief."}
    assert main(["logs", "export", "--format", "pairs", "-o", str(prefs)]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 preference pairs" in out and "skipped 1 (multi-turn or system-prompt conversations)" in out
    ps = pairs.read(prefs)
    assert ps.records[0].fields == {"prompt": "Do you like the cat?", "chosen": "I like the cat.",
                                    "rejected": "I hate the cat."}


@pytest.fixture
def tiny_base(tmp_path, home):
    import tiny
    from oficina.registry.registry import Registry
    from oficina.registry.sources import import_path

    reg = Registry(home)
    tiny.build("llama", tmp_path / "llama")
    import_path(reg, tmp_path / "llama", "tiny")
    return reg


@pytest.mark.slow
def test_a_tiny_model_trains_on_the_exported_files(reviewed, tiny_base, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    chat, prefs = tmp_path / "chat.jsonl", tmp_path / "prefs.jsonl"
    assert main(["logs", "export", "-o", str(chat)]) == 0
    assert main(["logs", "export", "--format", "pairs", "--rated", "corrected", "-o", str(prefs)]) == 0
    capsys.readouterr()
    common = ["--max-steps", "2", "--batch-size", "2", "--max-length", "128", "--val-split", "0.25"]
    assert main(["tune", "tiny", "--data", str(chat), "--method", "lora", "--out", "tiny-reviewed", *common]) == 0
    assert "train loss" in capsys.readouterr().out
    assert main(["dpo", "tiny", "--data", str(prefs), "--method", "lora", "--out", "tiny-dpo", *common]) == 0
    assert "held-out preference accuracy" in capsys.readouterr().out
    assert tiny_base.get("tiny-reviewed").producer["data"]["train"]["shape"] == "chat"
    assert tiny_base.get("tiny-dpo").producer["data"]["train"]["shape"] == "preference"


# -- stats --------------------------------------------------------------------------------------------
def test_stats_on_a_seeded_log(log, capsys):
    from oficina.serve import stats

    day1 = time.mktime((2026, 11, 29, 12, 0, 0, 0, 0, -1))
    day2 = day1 + 86400
    for i in range(1, 21):  # total 0.1 .. 2.0 s, ttft = total / 10, 11 tokens decoded in (total - ttft)
        log.record(_entry(f"q{i}", "a", total_s=i / 10, ttft_s=i / 100, output_tokens=11, prompt_tokens=100,
                          cost=0.01, created=day1 if i <= 10 else day2))
    log.record(_entry("hit", "a", total_s=0.002, ttft_s=0.001, output_tokens=11, cached=True, cost=0.0,
                      created=day2))
    log.record(_entry("boom", "", model="other:latest", finish="error", error="x", total_s=5.0, created=day2))
    (o, m) = stats.by_model(log.find())  # sorted by name
    assert (m.model, m.requests, m.failed, m.cached, o.failed) == ("tiny:latest", 21, 0, 1, 1)
    assert m.latency_p50 == pytest.approx(1.0) and m.latency_p95 == pytest.approx(1.9)
    assert m.tokens_per_s == pytest.approx(20 * 10 / sum(i / 10 - i / 100 for i in range(1, 21)))
    assert m.cost == pytest.approx(0.2) and o.latency_p50 is None
    days = stats.by_day(log.find())
    assert [(d.day, d.model, d.requests) for d in days] == [
        ("2026-11-29", "tiny:latest", 10), ("2026-11-30", "other:latest", 1), ("2026-11-30", "tiny:latest", 11)]
    assert main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "LATENCY p50" in out and "1.00s" in out and "1.90s" in out and "cost by day" in out
    assert "2026-11-29" in out and "0.1" in out
    assert main(["stats", "--json", "--since", "2026-11-30"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {m["model"]: m["requests"] for m in data["models"]} == {"other:latest": 1, "tiny:latest": 11}


@pytest.mark.skipif(sys.platform != "linux", reason="a small tmpfs needs Linux namespaces")
def test_a_full_disk_never_fails_a_request_and_the_entries_are_written_once_there_is_room(tmp_path):
    """A real full disk: the log on a 256 KiB tmpfs in a private mount namespace (unshare -rm),
    filled up; recording must return at once, and what was held is written once room returns."""
    if subprocess.run(["unshare", "-rm", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("unshare -rm is not allowed here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        import os, subprocess
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', {str(mnt)!r}], check=True)
        from oficina.serve.convlog import ConvLog, Entry

        def entry(i, n):
            return Entry(route='/api/chat', model='m', messages=[{{'role': 'user', 'content': f'q{{i}}'}}],
                         output='x' * n, digest='sha256:' + 'ab' * 32, finish='stop', prompt_tokens=1,
                         output_tokens=1, ttft_s=0.1, total_s=0.2)

        log = ConvLog({str(mnt)!r} + '/logs.db')
        first = log.record(entry(0, 10))
        with open({str(mnt)!r} + '/filler', 'wb', buffering=0) as f:   # fill the disk to the last block
            try:
                while True:
                    f.write(b'\\0' * 4096)
            except OSError:
                pass
        held = [log.record(entry(i, 20000)) for i in range(1, 4)]   # must not raise
        print('FULL', first is not None, held.count(None), log.pending, log.dropped)
        os.remove({str(mnt)!r} + '/filler')
        log.close()
        print('AFTER', sorted(e.prompt_text() for e in ConvLog({str(mnt)!r} + '/logs.db').find()))
    """)
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", script], check=False, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = next(line for line in proc.stdout.splitlines() if line.startswith("FULL")).split()
    assert full[1:3] == ["True", "3"], proc.stdout          # none written, none raised
    assert int(full[3]) + int(full[4]) == 3, proc.stdout    # each held for a retry or counted
    after = next(line for line in proc.stdout.splitlines() if line.startswith("AFTER"))
    assert "'q0'" in after and (int(full[4]) > 0 or all(f"'q{i}'" in after for i in (1, 2, 3))), proc.stdout
