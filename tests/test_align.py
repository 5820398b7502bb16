"""Preference alignment and distillation on tiny models built in the test: DPO raises held-out
preference accuracy (full, and LoRA on top of an already aligned model, through the CLI); a reward
model learns the pairs and ranks answers; distillation brings a tiny student toward its teacher;
bad preference files and mismatched tokenizers are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiny
from oficina.align import pairs
from oficina.align.distill import DistillConfig, distill
from oficina.align.dpo import DPOConfig, dpo
from oficina.align.reward import reward, score
from oficina.cli import main
from oficina.errors import FormatError, InvalidOptions, OficinaError
from oficina.registry.registry import Registry
from oficina.registry.sources import import_path
from oficina.tuning.config import TuneConfig
from oficina.tuning.tasks import IGNORE, Context

THINGS = ["cat", "dog", "sofa", "sky", "sun", "tree", "bird", "fish", "river", "stone", "house", "road",
          "book", "lamp", "door", "cup"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CI machine's cores are shared: one thread per process is faster than two fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Registry:
    return Registry(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def base(reg, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("models") / "llama"
    tiny.build("llama", folder)
    import_path(reg, folder, "tiny")
    return "tiny"


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    """A preference a random model does not have (good over bad, like over hate), in two phrasings,
    so held-out pairs test whether it generalised."""
    rows = []
    for i, w in enumerate(THINGS):
        if i % 2:
            rows.append({"prompt": f"What is the {w} like?", "chosen": f"The {w} is good.",
                         "rejected": f"The {w} is bad."})
        else:
            rows.append({"prompt": f"Do you like the {w}?", "chosen": f"I like the {w}.",
                         "rejected": f"I hate the {w}."})
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(base: str, data: Path, method: str, **kw) -> TuneConfig:
    values = dict(base=base, method=method, data=str(data), epochs=3, batch_size=4, max_length=64,
                  val_split=0.25, warmup_steps=0, forgetting=False)
    values.update(kw)
    return TuneConfig(**values)


# -- preference files -----------------------------------------------------------------------------
BAD_FILES = [
    ("same.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}',
                    '{"prompt": "p", "chosen": "a", "rejected": "a"}',
                    '{"prompt": "q", "chosen": " x ", "rejected": "x"}'],
     r"same\.jsonl:2: chosen and rejected are the same answer \(and 1 more: 3\)"),
    ("missing.jsonl", ['{"prompt": "p", "chosen": "a"}'], r"missing\.jsonl:1: missing field 'rejected'"),
    ("empty.jsonl", ['{"prompt": "p", "chosen": "", "rejected": "b"}'], r"empty\.jsonl:1: field 'chosen' is empty"),
    ("number.jsonl", ['{"prompt": "p", "chosen": 3, "rejected": "b"}'], r"number\.jsonl:1: field 'chosen' must be"),
    ("broken.jsonl", ['{"prompt": "p",'], r"broken\.jsonl:1: not valid JSON"),
    ("pairs.txt", ["p"], r"pairs\.txt: preference pairs come in \.jsonl or \.csv"),
    ("p.csv", ["prompt,chosen,rejected", "hi,yes,yes"], r"p\.csv:2: chosen and rejected are the same"),
]


@pytest.mark.parametrize("name,lines,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_preference_file_problems_are_reported_with_file_and_line(name, lines, message, tmp_path):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=message):
        pairs.read(p)


def test_answer_log_probs_cover_the_answer_and_match_log_softmax(tmp_path, prefs):
    model = tiny.build("llama", tmp_path / "m")
    tok = tiny.tokenizer()
    ds = pairs.read(prefs)
    encoded = pairs.encode(ds, Context(tok, 64))
    chosen, rejected = encoded[1]
    answer = [i for i, t in zip(chosen.ids, chosen.target) if t != IGNORE]
    assert tok.decode(answer, skip_special_tokens=True).strip() == ds.records[1].fields["chosen"]
    assert chosen.ids[:len(chosen.ids) - len(answer)] == rejected.ids[:len(rejected.ids) - len(
        [t for t in rejected.target if t != IGNORE])]  # the same prompt
    batch = pairs.PairBatches(encoded[:3], 3, tok.pad_token_id, shuffle=False).batch([0, 1, 2]).inputs
    with torch.no_grad():
        got = pairs.sequence_logps(model, batch)
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    labels = batch["labels"][:, 1:]
    want = (logp[:, :-1].gather(-1, labels.clamp(min=0)[..., None])[..., 0] * (labels != IGNORE)).sum(-1)
    assert got.shape == (6,) and torch.allclose(got, want, atol=1e-4)


# -- DPO --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpo_full(base, prefs, reg):
    return dpo(_cfg(base, prefs, "full", learning_rate=3e-3, out="tiny-dpo"), DPOConfig(beta=0.1), reg)


def test_dpo_raises_held_out_preference_accuracy(dpo_full, reg):
    r = dpo_full
    assert r.before["accuracy"] < r.after["accuracy"] and r.after["accuracy"] >= 0.75
    assert r.before["reward_accuracy"] == 0.5 and r.after["reward_accuracy"] > 0.5
    assert r.after["loss"] < r.before["loss"]
    e = reg.get("tiny-dpo")
    assert e.parent == "tiny:latest@1" and e.producer["op"] == "dpo" and e.producer["dpo"] == {"beta": 0.1}
    assert e.producer["preference_accuracy"] == {"before": r.before["accuracy"], "after": r.after["accuracy"]}
    assert e.producer["data"]["train"]["shape"] == "preference" and not e.manifest.adapters


def test_dpo_with_lora_on_an_aligned_model_through_the_cli(dpo_full, prefs, reg, monkeypatch, capsys):
    import oficina

    monkeypatch.setenv("OFICINA_HOME", str(reg.home))
    assert main(["dpo", "tiny-dpo", "--data", str(prefs), "--method", "lora", "--opt", "r=4", "--out",
                 "tiny-dpo-lora", "--max-steps", "2", "--batch-size", "4", "--lr", "1e-2", "--val-split", "0.25",
                 "--max-length", "64", "--beta", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "held-out preference accuracy" in out and "registered" in out
    e = reg.get("tiny-dpo-lora")
    assert e.parent == "tiny-dpo:latest@1"
    assert {a.path for a in e.manifest.adapters} >= {"0/adapter_config.json", "0/adapter_model.safetensors"}
    assert e.producer["op"] == "dpo" and e.producer["method"] == "lora" and e.producer["dpo"]["beta"] == 0.2
    m = oficina.load("tiny-dpo-lora", registry=reg)
    assert isinstance(m.generate("Do you like the cup?", num_predict=3, seed=0), str)


def test_prompt_tuning_is_refused_for_dpo(base, prefs, reg):
    with pytest.raises(OficinaError, match="prompt tuning adds virtual tokens"):
        dpo(_cfg(base, prefs, "prompt", learning_rate=1e-2), registry=reg)


# -- reward model -----------------------------------------------------------------------------------
def test_dpo_refuses_a_base_that_carries_a_prompt_adapter(base, prefs, reg, tmp_path):
    """The virtual-token check ``tune`` makes also holds for preference training (they share one
    session): a prompt-tuned model cannot be folded into plain weights, so DPO on it is refused
    with a sentence instead of training on shifted positions."""
    from oficina.tuning.run import tune

    text = tmp_path / "text.txt"
    text.write_text("".join(f"The {w} is here and the {w} is good.\n\n" for w in THINGS))
    tune(TuneConfig(base=base, method="prompt", data=str(text), max_steps=1, batch_size=4, max_length=32,
                    forgetting=False, out="tiny-prompted", options={"num_virtual_tokens": 2}), reg)
    with pytest.raises(OficinaError, match="carries a prompt/prefix adapter, which cannot be merged"):
        dpo(_cfg("tiny-prompted", prefs, "lora"), registry=reg)


def test_dpo_in_bf16_uses_tunes_fast_paths_and_restores_the_weights(base, prefs, reg, monkeypatch):
    """bf16 DPO runs on the same session as ``tune``: frozen weights stored in bf16 for the run
    (the reference log-probabilities taken under the same autocast), fp32 again afterwards."""
    from oficina.tuning import frozen

    lowered = []
    original = frozen.lower

    def spy(*args, **kwargs):  # the real function; what it lowered is kept
        result = original(*args, **kwargs)
        lowered.append(dict(result.params) if result else {})
        return result

    monkeypatch.setattr(frozen, "lower", spy)
    r = dpo(_cfg(base, prefs, "lora", epochs=1, precision="bf16", learning_rate=1e-3), registry=reg)
    assert len(lowered) == 1 and lowered[0]  # the frozen linear weights were stored in bf16 ...
    assert all(p.dtype == torch.float32 for p in lowered[0].values())  # ... and are fp32 again
    assert r.loop.steps > 0 and r.after["accuracy"] >= 0


def test_reward_model_learns_the_pairs_and_ranks_answers(base, prefs, reg, monkeypatch, capsys):
    r = reward(_cfg(base, prefs, "lora", epochs=4, learning_rate=1e-2, out="tiny-rm"), reg)
    assert r.after["accuracy"] >= 0.75 and r.after["loss"] < r.before["loss"]
    assert r.after["margin"] > r.before["margin"]
    e = reg.get("tiny-rm")
    assert e.producer["op"] == "reward" and e.producer["preference_accuracy"]["after"] == r.after["accuracy"]
    ranked = score("tiny-rm", "What is the lamp like?", ["The lamp is bad.", "The lamp is good."], reg)
    assert ranked[0][0] == "The lamp is good." and ranked[0][1] > ranked[1][1]
    monkeypatch.setenv("OFICINA_HOME", str(reg.home))
    assert main(["score", "tiny-rm", "Do you like the cup?", "I hate the cup.", "I like the cup."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RANK", "REWARD", "ANSWER"] and lines[1].endswith("I like the cup.")
    with pytest.raises(OficinaError, match="is not a reward model"):
        score("tiny", "hi", ["a"], reg)


# -- distillation -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(reg, tmp_path_factory) -> tuple[str, Path]:
    """A tiny Llama pretrained on regular text, so it has something to teach."""
    from oficina.pretrain import PretrainConfig, prepare, pretrain

    d = tmp_path_factory.mktemp("text")
    text = d / "text.txt"
    text.write_text("\n\n".join(f"The {w} is near the {v}. I like the {w} and the {v}."
                                for w in THINGS for v in THINGS[:6]) + "\n")
    cfg = PretrainConfig.from_mapping({
        "family": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "embedding_length": 64,
        "feed_forward_length": 128, "context_length": 64, "vocab_size": 300, "samples": [],
        "train": {"max_steps": 40, "batch_size": 8, "max_length": 32, "learning_rate": 1e-2, "warmup_steps": 5,
                  "run_dir": str(d / "run")}})
    pretrain(prepare(cfg, text, "teacher", reg))
    return "teacher", text


def test_distillation_brings_the_student_toward_its_teacher(teacher, reg, tmp_path):
    name, text = teacher
    student = tmp_path / "student.yaml"
    student.write_text("family: llama\nlayers: 1\nheads: 2\nembedding_length: 32\nfeed_forward_length: 64\n"
                       "context_length: 64\n")
    cfg = TuneConfig(base=name, data=str(text), max_steps=30, batch_size=8, max_length=32, learning_rate=1e-2,
                     val_split=0.2, warmup_steps=0, eval_every=30, out="student", forgetting=False)
    r = distill(cfg, str(student), DistillConfig(temperature=2.0, alpha=0.5), reg)
    t, before, after = r.teacher, r.student_before, r.student
    assert after.kl < before.kl
    gap = lambda s: abs(torch.log(torch.tensor(s.perplexity)) - torch.log(torch.tensor(t.perplexity)))
    assert gap(after) < gap(before)
    assert t.parameters > 3 * after.parameters and after.tokens_per_s > 0 and t.tokens_per_s > 0
    e = reg.get("student")
    assert e.parent == "teacher:latest@1" and e.producer["op"] == "distill"
    assert e.producer["distill"] == {"temperature": 2.0, "alpha": 0.5} and "architecture" in e.producer["student"]
    assert e.metrics["val_kl"] == after.kl


def test_distillation_refuses_students_with_another_tokenizer(teacher, reg, tmp_path):
    name, text = teacher
    other = tmp_path / "other"
    tiny.build("llama", other)
    tiny.tokenizer(vocab_size=280).save_pretrained(other)  # trained the same way, fewer merges
    cfg = TuneConfig(base=name, data=str(text), max_steps=1, forgetting=False)
    with pytest.raises(OficinaError, match="do not share a tokenizer"):
        distill(cfg, str(other), registry=reg)
    bad = tmp_path / "student.yaml"
    bad.write_text("family: llama\nlayers: 1\nheads: 2\nembedding_length: 32\nvocab_size: 123\n")
    with pytest.raises(InvalidOptions, match="vocab_size 123 does not match the tokenizer"):
        distill(cfg, str(bad), registry=reg)
