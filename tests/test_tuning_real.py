"""Tuning the real catalogue models (slow; each a few minutes on 2 CPU cores):

- SmolLM2-135M with LoRA learns facts about an invented island (oficina/data/tune/tavrenna_*)
  and answers held-back paraphrased questions the base model cannot; the forgetting check
  (perplexity on general text before/after) is reported.
- MiniLM (all-MiniLM-L6-v2) with a classification head learns sentiment well above chance on
  a held-out split.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from oficina.tuning import TuneConfig, run

pytestmark = [pytest.mark.slow, pytest.mark.real]

DATA = resources.files("oficina.data").joinpath("tune")


def _heldout() -> list[dict]:
    return [json.loads(line) for line in DATA.joinpath("tavrenna_heldout.jsonl").read_text().splitlines()]


def _score(model, questions: list[dict]) -> tuple[int, list[str]]:
    hits, log = 0, []
    for q in questions:
        answer = model.generate(q["instruction"], temperature=0, num_predict=20)
        ok = any(k.lower() in answer.lower() for k in q["expect"])
        hits += ok
        log.append(f"{'OK' if ok else '--'} {q['instruction']} => {answer!r}")
    return hits, log


def test_smollm2_lora_learns_invented_facts(real_registry, smollm2, capsys):
    import oficina

    questions = _heldout()
    base_hits, base_log = _score(smollm2, questions)
    cfg = TuneConfig(base="smollm2", method="lora", out="smollm2-tavrenna-test",
                     data=str(DATA.joinpath("tavrenna_train.jsonl")),
                     eval=str(DATA.joinpath("tavrenna_heldout.jsonl")),
                     epochs=3, batch_size=8, learning_rate=2e-3, warmup_steps=3, max_length=128,
                     options={"r": 16, "alpha": 32, "target_modules": ["all-linear"]})
    r = run.tune(cfg, real_registry)
    tuned = oficina.load("smollm2-tavrenna-test", registry=real_registry)
    hits, log = _score(tuned, questions)
    with capsys.disabled():
        print(f"\nbase {base_hits}/{len(questions)}, tuned {hits}/{len(questions)} held-out paraphrases; "
              f"perplexity on general text {r.perplexity_before:.2f} -> {r.perplexity_after:.2f}; "
              f"{r.metrics['tokens_per_s']:.0f} tokens/s, {r.metrics['wall_seconds']:.0f}s")
        print("\n".join(log))
    assert base_hits <= 2, base_log
    assert hits >= len(questions) // 2 and hits >= base_hits + 8, log
    assert r.perplexity_before and r.perplexity_after  # reported, and in the registry
    assert r.entry.metrics["perplexity_after"] == r.perplexity_after


def test_minilm_sentiment_beats_chance(real_registry, capsys):
    test_file = DATA.joinpath("sentiment_test.jsonl")
    cfg = TuneConfig(base="minilm", method="lora", out="minilm-sentiment-test",
                     data=str(DATA.joinpath("sentiment_train.csv")), eval=str(test_file),
                     epochs=8, batch_size=16, learning_rate=1e-3, max_length=64,
                     options={"r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "dense"]})
    r = run.tune(cfg, real_registry)
    with capsys.disabled():
        print(f"\nminilm sentiment: held-out accuracy {r.metrics['val_accuracy']:.1%} (chance 50%)")
    assert r.task == "classification"
    assert r.metrics["val_accuracy"] >= 0.8, r.metrics  # chance is 0.5 (balanced labels)
    tuned = run.load_tuned("minilm-sentiment-test", real_registry)
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    predicted = tuned.classify([x["text"] for x in rows])
    accuracy = sum(p == x["label"] for p, x in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(r.metrics["val_accuracy"], abs=1.5 / len(rows))  # padding may flip a tie


def test_lora_with_no_settings_learns_a_small_fact_set(real_registry, smollm2, monkeypatch, capsys,
                                                        _quiet_reporter):
    """A first run as the README types it, no flags beyond the data: `oficina tune smollm2
    --method lora --data FILE --out NAME` on 36 question/answer pairs (12 facts, 3 phrasings)
    answers most of the 12 held-out paraphrases, and its header says which values were chosen."""
    import oficina
    from oficina.cli import main

    questions = [json.loads(line) for line in
                 DATA.joinpath("tavrenna_small_heldout.jsonl").read_text().splitlines()]
    base_hits, base_log = _score(smollm2, questions)
    monkeypatch.setenv("OFICINA_HOME", str(real_registry.home))
    assert main(["tune", "smollm2", "--method", "lora", "--data",
                 str(DATA.joinpath("tavrenna_small_train.jsonl")), "--out", "smollm2-defaults-test"]) == 0
    out = capsys.readouterr().out
    header = next(m for kind, m in _quiet_reporter.messages if m.startswith("settings:"))
    assert "(chosen)" in header and "learning rate 0.002 (lora's default for models under 1B" in header, header
    assert "target_modules all-linear" in header, header
    tuned = oficina.load("smollm2-defaults-test", registry=real_registry)
    hits, log = _score(tuned, questions)
    with capsys.disabled():
        print(f"\n{header}\nbase {base_hits}/{len(questions)}, tuned with defaults {hits}/{len(questions)} "
              f"held-out paraphrases\n" + "\n".join(log) + "\n" + out)
    assert "forgetting check" in out and "%" in out  # the cost is reported
    assert base_hits <= 2, base_log
    assert hits > len(questions) // 2, log
