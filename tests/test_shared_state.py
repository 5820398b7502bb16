"""State a server can share (issue 18, item 6): one loaded Model and one Registry used by 8
threads at once give each thread what it gets alone — the same greedy text, its own stats, its
own reporter's messages — with no exception (the registry opens one SQLite connection per
thread; reporting is per context; results carry their stats)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import oficina
from oficina.create import create, to_modelfile
from oficina.generation.session import resolve
from oficina.registry.registry import Registry
from oficina.registry.sources import pull
from oficina.report import Reporter, reporter, reporting
from tiny import build

THREADS = 8


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    build("llama", root / "llama")
    reg = Registry(root / "home")
    pull(reg, str(root / "llama"), name="tiny")
    (root / "Modelfile").write_text("FROM tiny\nSYSTEM Be brief.\nPARAMETER temperature 0\n")
    create(reg, "tiny-brief", root / "Modelfile")
    yield reg, oficina.load("tiny", registry=reg)
    reg.close()


def _work(model, reg: Registry, i: int, start: threading.Barrier | None = None) -> dict:
    """What one thread (or request) does: generate, chat, read the registry; reports go to a
    reporter of its own."""
    if start is not None:
        start.wait()  # all threads begin together
    with reporting(Reporter(quiet=True)) as mine:
        reporter().note(f"thread {i}")
        # a prompt longer than num_ctx: the library warns (through the reporter) that it was cut
        long = model.generate("the cat sat on the sofa " * (8 + i), raw=True, temperature=0,
                              num_predict=4 + i, num_ctx=40 + i)
        mine_after_generate = model.last_stats  # this thread's last call, not another's
        chat = model.chat([{"role": "user", "content": f"Where does cat {i} sleep?"}], temperature=0,
                          num_predict=6 + i)
    return {
        "long": (str(long), long.stats.tokens, long.stats.done_reason, long.stats.truncated),
        "chat": (str(chat), chat.stats.tokens, chat.stats.done_reason),
        "last_stats_is_own": mine_after_generate is long.stats and model.last_stats is chat.stats,
        "messages": list(mine.messages),
        "registry": ([e.ref for e in reg.list()], resolve("tiny-brief", reg, auto_pull=False).digest,
                     to_modelfile(reg.get("tiny-brief"), reg), [e.ref for e in reg.history("tiny")[0]]),
    }


def test_eight_threads_share_a_model_and_the_registry(shared):
    reg, model = shared
    alone = [_work(model, reg, i) for i in range(THREADS)]
    # each prompt was cut, and said so in its own words: the threads' results all differ
    assert len({a["long"][3] for a in alone}) == THREADS and all(a["long"][3] for a in alone)

    start = threading.Barrier(THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        together = [f.result() for f in [pool.submit(_work, model, reg, i, start) for i in range(THREADS)]]

    for i, (a, t) in enumerate(zip(alone, together)):
        assert t == a, f"thread {i}"
        assert t["last_stats_is_own"]
        assert t["messages"] == [("note", f"thread {i}"), ("warning", t["long"][3])]


def test_default_reporter_keeps_a_bounded_number_of_messages():
    r = Reporter(quiet=True, keep=10)
    for n in range(100):
        r.note(f"note {n}")
    assert [m for _, m in r.messages] == [f"note {n}" for n in range(90, 100)]
    with reporting(r):
        assert reporter() is r
    assert reporter() is not r


def test_chat_options_set_in_a_conversation_do_not_change_the_model(shared):
    _, model = shared
    before = model.options
    model.chat([{"role": "user", "content": "Hi"}], temperature=0.3, num_predict=2)
    assert model.options is before and model.options.temperature == before.temperature


def test_chat_loop_set_parameter_is_the_conversation_s_own(shared, monkeypatch, capsys):
    """`oficina run NAME` chat: /set parameter changes this conversation's options, not the
    loaded model's (which a server would share)."""
    from argparse import Namespace

    from oficina.cli.run import _chat_loop

    _, model = shared
    before = model.options
    lines = iter(["/set parameter num_predict 3", "/set parameter temperature 0.25", "/show parameters",
                  "Hi", "/bye"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))  # the terminal's lines
    assert _chat_loop(model, Namespace(name="tiny", system=None, verbose=True)) == 0
    out, err = capsys.readouterr()
    assert "temperature          0.25" in out and "num_predict          3" in out
    assert "eval count:           3 token(s)" in err or "done reason:          stop" in err
    assert model.options is before and model.options.temperature == before.temperature


def test_each_thread_has_its_own_connection_closed_after_the_thread(tmp_path):
    import sqlite3

    from oficina.registry.db import PerThread

    db = PerThread(tmp_path / "x.db", "CREATE TABLE IF NOT EXISTS t (x)")
    seen = []

    def use():
        seen.append(db.get())
        with db.transaction():
            db.execute("INSERT INTO t VALUES (1)")

    for target in (use, use, use, db.get):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert len({id(c) for c in seen}) == 3 and all(c is not db.get() for c in seen)
    for c in seen:  # the threads have ended: their connections were closed by a later thread's get()
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            c.execute("SELECT 1")
    mine = db.get()
    db.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        mine.execute("SELECT 1")
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (3,)  # opened again on use
