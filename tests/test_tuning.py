"""Tuning on tiny models built in the test: every method in the METHODS registry trains, saves,
reloads with identical logits; LoRA-like merges match unmerged; resume equals an uninterrupted
run; bad data names file:line; NaN stops with the last good checkpoint; a 2-process gloo run."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from oficina.errors import FormatError, InvalidOptions, OficinaError
from oficina.tuning import METHODS, TuneConfig, load_all, loop, run, tasks
from oficina.tuning import data as tdata
from oficina.tuning.batches import Batches, collate, pack

load_all()
METHOD_NAMES = sorted(METHODS)
FAMILY_TASK = {"llama": "causal", "bert": "classification", "t5": "seq2seq"}


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    out = {}
    for fam in ("llama", "bert", "t5", "gpt2"):
        tiny.build(fam, root / fam)
        out[fam] = root / fam
    return out


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def datafiles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    words = ["cat", "dog", "sofa", "sky", "blue", "capital", "model", "token"]
    return {
        "causal": _write_jsonl(d / "inst.jsonl", [
            {"instruction": f"Where does the {w} sleep?", "output": f"The {w} sleeps on the sofa {i}."}
            for i, w in enumerate(words * 3)]),
        "classification": _write_jsonl(d / "cls.jsonl", [
            {"text": f"the {w} is {'lovely and good' if i % 2 else 'awful and bad'}", "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(words * 3)]),
        "seq2seq": _write_jsonl(d / "s2s.jsonl", [
            {"input": f"The {w} sat.", "target": f"O {w} sentou {i}."} for i, w in enumerate(words * 3)]),
    }


def _cfg(base: Path, data: Path, method: str, **kw) -> TuneConfig:
    defaults = dict(base=str(base), method=method, data=str(data), epochs=2, batch_size=4, max_length=64,
                    out=f"t-{method}", forgetting=False, learning_rate=1e-2)
    defaults.update(kw)
    return TuneConfig(**defaults)


def _probe(model, family: str) -> dict:
    torch.manual_seed(123)
    ids = torch.randint(3, 250, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if family == "t5":
        batch["decoder_input_ids"] = torch.randint(3, 250, (2, 5))
    return batch


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits.float()


# -- the registry of methods ------------------------------------------------------------------------
def test_methods_share_one_surface():
    assert {"full", "lora", "qlora", "prompt", "prefix", "ia3", "adapter"} <= set(METHODS)
    for name, m in METHODS.items():
        assert m.name == name and dataclasses.is_dataclass(m.config)
        assert all(callable(f) for f in (m.apply, m.trainable, m.save, m.load))
        assert m.artifact in ("adapter", "model")
        m.config()  # every setting has a default
    assert {n for n, m in METHODS.items() if m.merge} == {"lora", "qlora", "ia3"}


@pytest.mark.parametrize("family", list(FAMILY_TASK))
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_trains_saves_reloads_identically(method, family, bases, datafiles, registry):
    task = FAMILY_TASK[family]
    cfg = _cfg(bases[family], datafiles[task], method, epochs=1 if family != "llama" else 2)
    r = run.tune(cfg, registry)
    assert r.task == task and r.trainable > 0
    assert r.loop.steps == r.loop.total_steps and r.loop.train_loss is not None
    assert (r.run_dir / "loss.png").stat().st_size > 1000
    if METHODS[method].artifact == "adapter":  # PEFT's layout
        assert (r.artifact / "adapter_config.json").is_file()
        assert (r.artifact / "adapter_model.safetensors").is_file()
    # the model as trained vs. the model reloaded from the registry (adapters not merged)
    model = _trained_model(r)
    batch = _probe(model, family)
    before = _logits(model, batch)
    tuned = run.load_tuned(r.entry.ref, registry)
    after = _logits(tuned.model, batch)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5), (before - after).abs().max()
    e = r.entry
    assert e.producer["method"] == method and e.producer["base"]["digest"].startswith("sha256:")
    assert e.producer["data"]["train"]["digest"].startswith("sha256:")
    assert e.producer["hyperparameters"]["learning_rate"] == 1e-2
    assert "train_loss" in e.metrics and "val_loss" in e.metrics


_LAST: dict = {}


@pytest.fixture(autouse=True)
def _keep_trained(monkeypatch):
    """Keep the last trained model of run.tune so a test can compare it with the reload."""
    original = loop.train

    def train(model, *a, **kw):
        _LAST["model"] = model
        return original(model, *a, **kw)

    monkeypatch.setattr(loop, "train", train)
    yield
    _LAST.clear()


def _trained_model(result):
    return _LAST["model"]


def test_peft_methods_load_with_plain_peft(bases, datafiles, registry):
    """Other tools can read our LoRA adapter: peft alone, no oficina code."""
    import transformers
    from peft import PeftModel

    r = run.tune(_cfg(bases["llama"], datafiles["causal"], "lora", epochs=1), registry)
    batch = _probe(None, "llama")
    ours = _logits(_trained_model(r), batch)
    plain = transformers.AutoModelForCausalLM.from_pretrained(bases["llama"])
    theirs = _logits(PeftModel.from_pretrained(plain, r.artifact), batch)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "ia3", "qlora"])
def test_merge_matches_unmerged(method, bases, datafiles, registry):
    import oficina

    r = run.tune(_cfg(bases["llama"], datafiles["causal"], method, epochs=1, out="m"), registry)
    batch = _probe(None, "llama")
    unmerged = _logits(run.load_tuned("m", registry).model, batch)
    merged_entry = run.merge("m", "m-merged", registry)
    assert merged_entry.parent == r.entry.ref and not merged_entry.manifest.adapters
    merged = oficina.load("m-merged", registry=registry)
    assert torch.allclose(unmerged, _logits(merged.torch_model, batch), atol=1e-4)


def test_merge_refuses_unmergeable(bases, datafiles, registry):
    run.tune(_cfg(bases["llama"], datafiles["causal"], "prompt", epochs=1, out="p"), registry)
    with pytest.raises(OficinaError, match="prompt, which cannot be folded"):
        run.merge("p", None, registry)


# which runner serves a tuned model: adapters that merge (and full tuning) run on the fast
# decoder, merged at load; prompt/prefix tuning's virtual tokens need transformers, and say so
RUNNER = {"lora": "fast", "ia3": "fast", "full": "fast", "adapter": "transformers",
          "prompt": "transformers", "prefix": "transformers"}


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "prefix", "adapter", "full"])
def test_oficina_run_uses_tuned_model(method, bases, datafiles, registry):
    """``oficina.load(TUNED)`` (what ``oficina run`` calls) gives the tuned model's next-token
    logits through the decode engine, including prompt/prefix tuning's virtual tokens."""
    import oficina

    r = run.tune(_cfg(bases["llama"], datafiles["causal"], method, epochs=1, out="r"), registry)
    trained = _trained_model(r).eval()
    m = oficina.load("r", registry=registry)
    caps = m.runner.capabilities
    assert caps.name == RUNNER[method], caps.note
    if method in ("lora", "ia3"):
        assert "adapters merged into the weights at load" in caps.note
    elif method in ("prompt", "prefix"):
        assert "prompt/prefix adapters run only in transformers" in caps.note
    ids = m.encode_chat([{"role": "user", "content": "Where does the cat sleep?"}])
    with torch.no_grad():
        want = trained(input_ids=torch.tensor([ids])).logits[0, -1].float()
    assert torch.allclose(m.engine.logits(ids), want, atol=1e-4)
    runner = m.engine.runner  # the cached path the decode loop takes gives the same numbers
    slot, reused = runner.acquire(ids)
    try:
        assert torch.allclose(runner.prefill(slot, ids, reused), want, atol=1e-4)
    finally:
        runner.release(slot)
    out = m.generate("Where does the cat sleep?", temperature=0, num_predict=6)
    assert isinstance(out, str) and m.last_stats.eval_tokens > 0


def test_modelfile_adapter_applies_tuned_adapter(bases, datafiles, registry, tmp_path):
    import oficina
    from oficina.create import create

    r = run.tune(_cfg(bases["llama"], datafiles["causal"], "lora", epochs=1, out="a"), registry)
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {bases['llama']}\nADAPTER {r.artifact}\n")
    create(registry, "via-modelfile", mf)
    batch = _probe(None, "llama")
    tuned = _logits(oficina.load("a", registry=registry).torch_model, batch)
    via = _logits(oficina.load("via-modelfile", registry=registry).torch_model, batch)
    assert torch.allclose(tuned, via, atol=1e-5)


# -- the loop ---------------------------------------------------------------------------------------
def _with_loss(monkeypatch, wrap):
    task = tasks.TASKS["causal"]
    monkeypatch.setitem(tasks.TASKS, "causal", dataclasses.replace(task, loss=wrap(task.loss)))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_after_ctrl_c_equals_uninterrupted_run(bases, datafiles, registry, tmp_path, monkeypatch):
    # LoRA dropout on, so the restored RNG state matters too
    cfg = _cfg(bases["llama"], datafiles["causal"], "lora", epochs=3, batch_size=4, grad_accum=2,
               save_every=2, out=None, learning_rate=5e-3, run_dir=str(tmp_path / "a"),
               options={"dropout": 0.1})
    run.tune(cfg, registry)
    want = _trainable_state(_LAST["model"])

    calls = {"n": 0}

    def interrupt_at_step_3(loss_fn):
        def loss(model, batch):
            calls["n"] += 1
            if calls["n"] == 5:  # inside step 3 (2 micro-batches per step): like a Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
            return loss_fn(model, batch)
        return loss

    b = dataclasses.replace(cfg, run_dir=str(tmp_path / "b"))
    with monkeypatch.context() as mp:
        _with_loss(mp, interrupt_at_step_3)
        with pytest.raises(loop.Interrupted, match="--resume"):
            run.tune(b, registry)
    assert [p.name for p in loop.checkpoint.checkpoints(tmp_path / "b")][-1] == "step-00000003"
    r = run.tune(b, registry, resume=True)
    assert r.loop.resumed_from == 3
    got = _trainable_state(_LAST["model"])
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_resume_refuses_a_different_recipe(bases, datafiles, registry, tmp_path):
    cfg = _cfg(bases["llama"], datafiles["causal"], "lora", epochs=1, out=None, run_dir=str(tmp_path))
    run.tune(cfg, registry)
    with pytest.raises(OficinaError, match="different recipe"):
        run.tune(dataclasses.replace(cfg, learning_rate=1e-3), registry, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(bases, datafiles, registry, tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_at_step_4(loss_fn):
        def loss(model, batch):
            calls["n"] += 1
            value = loss_fn(model, batch)
            return value * float("nan") if calls["n"] == 4 else value
        return loss

    _with_loss(monkeypatch, nan_at_step_4)
    cfg = _cfg(bases["llama"], datafiles["causal"], "lora", epochs=3, save_every=2, out=None,
               run_dir=str(tmp_path))
    with pytest.raises(loop.Diverged, match=r"step 4 .*loss is nan.*step-00000002"):
        run.tune(cfg, registry)
    ckpts = loop.checkpoint.checkpoints(tmp_path)
    assert [c.name for c in ckpts] == ["step-00000002"]
    tensors, meta = loop.checkpoint.load(ckpts[-1])
    assert meta["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    for step in (1, 2, 3):
        loop.checkpoint.save(tmp_path, step, {"param/x": torch.ones(2) * step}, {"step": step}, keep=2)
    (tmp_path / "checkpoints" / ".tmp-crashed").mkdir()  # a write that died before its rename
    (tmp_path / "checkpoints" / "step-00000009").mkdir()  # no state.json: not complete
    assert [p.name for p in loop.checkpoint.checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    tensors, meta = loop.checkpoint.load(loop.checkpoint.latest(tmp_path))
    assert meta["step"] == 3 and torch.equal(tensors["param/x"], torch.full((2,), 3.0))


def test_schedule_warmup_and_cosine():
    cfg = TuneConfig(learning_rate=1.0, warmup_steps=2, schedule="cosine")
    lrs = [loop.schedule(cfg, s, 10) for s in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] == 1.0 and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert loop.schedule(dataclasses.replace(cfg, schedule="constant"), 7, 10) == 1.0


# -- data -------------------------------------------------------------------------------------------
def test_answer_only_labels_cover_the_answer_and_end_of_turn(bases):
    tok = tiny.tokenizer()
    rec = tdata.Record({"instruction": "Where is the cat?", "output": "On the sofa."}, "x:1")
    (ex,) = tasks.encode_causal(rec, "instruction", tasks.Context(tok, 128))
    trained = [i for i, lab in zip(ex.ids, ex.target) if lab != tasks.IGNORE]
    assert tok.decode(trained) == "On the sofa.</s>"
    assert tok.decode(ex.ids).startswith("<|user|>Where is the cat?</s><|assistant|>")
    (all_,) = tasks.encode_causal(rec, "instruction", tasks.Context(tok, 128, train_on="all"))
    assert all_.target == all_.ids


def test_chat_records_train_every_assistant_turn():
    tok = tiny.tokenizer()
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Cat?"}, {"role": "assistant", "content": "Sofa"}]
    (ex,) = tasks.encode_causal(tdata.Record({"messages": msgs}, "x:1"), "chat", tasks.Context(tok, 128))
    trained = tok.decode([i for i, lab in zip(ex.ids, ex.target) if lab != tasks.IGNORE])
    assert trained == "Hello</s>Sofa</s>"


def test_packing_keeps_examples_apart(bases):
    """A packed row gives each example the loss it has alone (position ids restart, attention
    is masked between examples)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(bases["llama"]).eval()
    exs = [tasks.Example([0, 5, 6, 7, 8], [0, 5, 6, 7, 8], "a"), tasks.Example([0, 9, 10, 11], [0, 9, 10, 11], "b")]
    (row,) = pack(exs, 64, seed=0)
    packed = collate([row], pad_id=2)
    assert "attention_mask" not in packed.inputs
    assert packed.inputs["position_ids"][0].tolist().count(0) == 2  # two examples, each from 0
    with torch.no_grad():
        lp = tasks.causal_loss(model, packed.inputs)
        sep = [tasks.causal_loss(model, collate([b], 2).inputs) for b in Batches(exs, 1, 2, shuffle=False, group_by_length=False).rows]
    n = [len(e.ids) - 1 for e in exs]
    assert torch.allclose(lp, (sep[0] * n[0] + sep[1] * n[1]) / sum(n), atol=1e-5)


def test_batch_order_is_a_function_of_seed_and_epoch():
    exs = [tasks.Example(list(range(i % 7 + 2)), list(range(i % 7 + 2)), str(i)) for i in range(40)]
    a, b = Batches(exs, 4, 0, seed=1), Batches(exs, 4, 0, seed=1)
    assert a.order(0) == b.order(0) and a.order(0) != a.order(1)
    assert sorted(i for batch in a.order(3) for i in batch) == list(range(40))
    r0, r1 = Batches(exs, 4, 0, seed=1, rank=0, world=2), Batches(exs, 4, 0, seed=1, rank=1, world=2)
    assert len(r0.order(0)) == len(r1.order(0)) == 5
    assert sorted(i for batch in r0.order(0) + r1.order(0) for i in batch) == list(range(40))


BAD = [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "fine"}\n{"text": "broken",\n', r"bad\.jsonl:3: not valid JSON"),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', r"bad\.jsonl:2: missing field 'output'"),
    ("bad.jsonl", '{"text": "a", "label": "pos"}\n{"text": "", "label": "neg"}\n', r"bad\.jsonl:2: field 'text' is empty"),
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', r"bad\.jsonl:1: the conversation has no assistant"),
    ("bad.jsonl", '[1, 2]\n', r"bad\.jsonl:1: expected a JSON object"),
    ("bad.jsonl", '{"prompt": "x"}\n', r"bad\.jsonl:1: missing field 'chosen' \(preference records need"),
    ("odd.jsonl", '{"question": "x"}\n', r"odd\.jsonl:1: unknown record"),
    ("bad.jsonl", "\n\n", r"bad\.jsonl: no records"),
    ("bad.csv", "text,label\ngood,pos\nbad,neg,extra\n", r"bad\.csv:3: expected 2 columns"),
    ("bad.parquet", "x", r"unknown data format \.parquet"),
]


@pytest.mark.parametrize("name,content,message", BAD)
def test_bad_data_is_reported_with_file_and_line(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(FormatError, match=message):
        tdata.read(path)


def test_label_outside_label_set_and_too_long_text(tmp_path):
    tok = tiny.tokenizer()
    ev = tdata.read(_write_jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]))
    ctx = tasks.Context(tok, 16, labels=("neg", "pos"))
    with pytest.raises(FormatError, match=r"val\.jsonl:2: label 'meh' is not in the label set \(neg, pos\)"):
        tasks.encode(ev, tasks.TASKS["classification"], ctx)
    long = tdata.read(_write_jsonl(tmp_path / "long.jsonl", [{"instruction": "hi", "output": "ok"},
                                                            {"instruction": "word " * 50, "output": "ok"}]))
    ctx = dataclasses.replace(ctx, max_length=40)
    with pytest.raises(FormatError, match=r"long\.jsonl:2: example is \d+ tokens, longer than max_length 40"):
        tasks.encode(long, tasks.TASKS["causal"], ctx)
    cut = tasks.encode(long, tasks.TASKS["causal"], dataclasses.replace(ctx, truncate=True))
    assert max(len(e.ids) for e in cut) == 40


def test_wrong_shape_for_task(tmp_path):
    ds = tdata.read(_write_jsonl(tmp_path / "pairs.jsonl", [{"input": "a", "target": "b"}]))
    with pytest.raises(FormatError, match="pair records cannot train a causal model"):
        tasks.encode(ds, tasks.TASKS["causal"], tasks.Context(tiny.tokenizer(), 16))
    prefs = tdata.read(_write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    with pytest.raises(FormatError, match="preference records cannot train a causal model.*oficina dpo"):
        tasks.encode(prefs, tasks.TASKS["causal"], tasks.Context(tiny.tokenizer(), 16))


def test_validation_split_is_seeded():
    ds = tdata.Dataset(Path("x"), "text", [tdata.Record({"text": str(i)}, f"x:{i}") for i in range(20)], "d")
    a_train, a_val = tdata.split(ds, 0.1, seed=3)
    b_train, b_val = tdata.split(ds, 0.1, seed=3)
    assert len(a_val) == 2 and a_val.records == b_val.records and len(a_train) == 18


# -- recipe and CLI -------------------------------------------------------------------------------
def test_recipe_file(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: smollm2\nmethod: lora\ndata: train.jsonl\nlearning_rate: 2e-4\n"
                      "epochs: 3\nprecision: bf16\nlora: {r: 16, target_modules: [q_proj, v_proj]}\n"
                      "prompt: {num_virtual_tokens: 4}\n")
    cfg = TuneConfig.from_file(recipe)
    assert cfg.data == str(tmp_path / "train.jsonl") and cfg.lr == 2e-4 and cfg.epochs == 3
    assert cfg.method_config().r == 16 and cfg.method_config().target_modules == ["q_proj", "v_proj"]
    recipe.write_text("method: lora\nlora: {rank: 4}\n")
    with pytest.raises(InvalidOptions, match="unknown lora option 'rank'"):
        TuneConfig.from_file(recipe)
    recipe.write_text("method: lora\nepochz: 4\n")
    with pytest.raises(InvalidOptions, match="unknown recipe key 'epochz'"):
        TuneConfig.from_file(recipe)
    recipe.write_text("method: lora\nbatch_size: many\n")
    with pytest.raises(InvalidOptions, match="batch_size: expected an integer"):
        TuneConfig.from_file(recipe)
    with pytest.raises(InvalidOptions, match="unknown tuning method 'lorax'"):
        TuneConfig(method="lorax").method_config()


def test_cli_tune_run_merge(bases, datafiles, home, tmp_path, capsys):
    from oficina.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {bases['llama']}\ndata: {datafiles['causal']}\nepochs: 1\nbatch_size: 4\n"
                      f"max_length: 64\nlora: {{r: 4}}\n")
    assert main(["tune", "--recipe", str(recipe), "--method", "lora", "--out", "cli-lora", "--opt", "alpha=8",
                 "--no-forgetting"]) == 0
    out = capsys.readouterr().out
    assert "registered" in out and "cli-lora version 1" in out
    assert main(["run", "cli-lora", "Where does the cat sleep?", "--num-predict", "4", "--temperature", "0"]) == 0
    capsys.readouterr()
    assert main(["show", "cli-lora"]) == 0
    assert re.search(r"adapters .*\n\s+0\s+lora\s+\d", capsys.readouterr().out)
    assert main(["merge", "cli-lora", "--out", "cli-merged"]) == 0
    assert "merged lora into cli-merged version 1" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\nnot json\n')
    assert main(["tune", str(bases["llama"]), "--data", str(bad), "--out", "x"]) == 1
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["tune", "--methods"]) == 0


def test_compare_prints_one_row_per_method(bases, datafiles, registry):
    from oficina.tuning.compare import compare

    cfg = _cfg(bases["llama"], datafiles["causal"], "lora", epochs=1, out=None, forgetting=True)
    rows = compare(cfg, ["lora", "prompt"], registry, isolate=False)
    assert [r.method for r in rows] == ["lora", "prompt"]
    assert all(r.trainable > 0 and r.tokens_per_s > 0 and r.artifact_bytes > 0 for r in rows)
    assert all(r.perplexity_before and r.perplexity_after for r in rows)


# -- quantized base ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,tol", [("int8", 0.01), ("int4", 0.15)])
def test_quant_linear_round_trip_and_input_gradient(scheme, tol):
    from oficina.quant import QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 32)
    q = QuantLinear.from_linear(lin, scheme)
    w = lin.weight.detach()
    assert (q.dequantize() - w).abs().max() <= tol * w.abs().max()
    x = torch.randn(5, 128, requires_grad=True)
    y = q(x)
    ref = torch.nn.functional.linear(x, q.dequantize(), lin.bias)
    assert torch.allclose(y, ref, atol=1e-5)
    y.sum().backward()
    assert torch.allclose(x.grad, q.dequantize().sum(0).expand(5, -1), atol=1e-5)
    assert q.nbytes < lin.weight.numel() * 4 / (3 if scheme == "int8" else 5)
    assert not any(p.requires_grad for p in q.parameters())


# -- more than one process ----------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_process_gloo(bases, datafiles, home, tmp_path):
    """The same CLI command under torchrun: 2 CPU processes, gloo, DDP; rank 0 registers."""
    env = {**os.environ, "OFICINA_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "oficina", "tune", str(bases["llama"]), "--data", str(datafiles["causal"]),
           "--method", "lora", "--out", "ddp", "--epochs", "1", "--batch-size", "2", "--max-length", "64",
           "--no-forgetting", "--val-split", "0.1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from oficina.registry.registry import Registry

    e = Registry(home).get("ddp")
    # 22 training examples / batch 2 = 11 micro-batches, split over 2 ranks -> 6 steps
    assert e.metrics["steps"] == 6 and e.producer["method"] == "lora"


def test_prefix_starts_as_its_init_text(bases):
    """The prefix begins as the model's own keys and values for init_text: the prefixed model's
    logits are the base model's logits for init_text + input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oficina.tuning import prefix

    folder = bases["llama"]
    tok = AutoTokenizer.from_pretrained(folder)
    text = "the cat sleeps on the sofa"
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    model = prefix.apply(AutoModelForCausalLM.from_pretrained(folder),
                         prefix.PrefixConfig(num_virtual_tokens=n, init_text=text), tasks.TASKS["causal"]).eval()
    ids = torch.tensor([tok("where is the dog", add_special_tokens=False)["input_ids"]])
    init = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        ref = base(input_ids=torch.cat([init, ids], 1)).logits[:, n:]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidOptions, match="projection"):
        prefix.PrefixConfig(projection=True, init_text="hello")
