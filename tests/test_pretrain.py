"""Pretraining on tiny configs: every family in the FAMILIES table trains a few steps, registers,
and reloads with identical logits and the architecture the config named; configs that cannot
work are refused before any compute, naming the field; the tokenizer trainer, the streamed
corpus, the objectives' batches and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny
from oficina.cli import main
from oficina.errors import FormatError, InvalidOptions
from oficina.pretrain import PretrainConfig, prepare, pretrain
from oficina.pretrain.blocks import BlockBatches
from oficina.pretrain.corpus import Corpus, tokenize
from oficina.pretrain.families import FAMILIES
from oficina.pretrain.objectives import OBJECTIVES, MaskedConfig, SpanConfig
from oficina.pretrain.tokenizer import special_ids, train_tokenizer
from oficina.tuning.tasks import IGNORE

NAMES = ["Mia", "Tom", "Lily", "Ben", "Sam", "Nora"]
THINGS = ["ball", "kite", "book", "cat", "boat", "cake"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The CI machine's cores are shared: one thread per process is faster than two fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Regular little stories, one a paragraph: easy enough that a tiny model learns their order."""
    d = tmp_path_factory.mktemp("corpus")
    docs = [f"{n} has a red {t}. {n} plays with the {t} in the garden. The {t} is new and {n} is happy."
            for i, (n, t) in enumerate((n, t) for n in NAMES for t in THINGS)]
    path = d / "stories.txt"
    path.write_text("\n\n".join(docs * 2) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(corpus, 300, out, sentinels=8)
    return out


def _config(family: str, **over) -> PretrainConfig:
    base = {"family": family, "layers": 2, "heads": 2, "embedding_length": 32, "feed_forward_length": 64,
            "context_length": 64, "samples": ["Mia has"],
            "train": {"max_steps": 3, "batch_size": 4, "max_length": 32, "eval_every": 3, "warmup_steps": 0}}
    train = {**base.pop("train"), **over.pop("train", {})}
    return PretrainConfig.from_mapping({**base, **over, "train": train})


# -- configs that cannot work ---------------------------------------------------------------------
BAD = [
    ({"embedding_length": 100, "heads": 3}, "heads: embedding_length 100 is not divisible by heads 3"),
    ({"heads": 4, "kv_heads": 3}, "kv_heads: heads 4 is not a multiple of kv_heads 3"),
    ({"family": "bert", "heads": 4, "kv_heads": 2}, "kv_heads: bert attention has one key/value head"),
    ({"embedding_length": 36, "heads": 4}, "heads: rotary position embeddings"),
    ({"embedding_length": 64, "heads": 2, "context_length": 200000}, "context_length 200000 is longer than rotary"),
    ({"context_length": 64, "train": {"max_length": 128}}, "train.max_length 128 is longer than context_length 64"),
    ({"family": "bert", "context_length": 64, "train": {"max_length": 65}}, "learned position table"),
    ({"family": "bert", "rope_theta": 500000}, "rope_theta: only llama"),
    ({"family": "gpt5"}, "family must be one of"),
    ({"layer": 2}, "unknown config field 'layer'"),
    ({"train": {"packing": True}}, "unknown train setting 'packing'"),
    ({"family": "bert", "objective": {"mask_probability": 1.5}}, "objective.mask_probability"),
    ({"layers": 0}, "layers must be at least 1"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m.split(":")[0].split(" ")[0] for _, m in BAD])
def test_config_that_cannot_work_is_refused_naming_the_field(fields, message):
    fields = dict(fields)
    train = fields.pop("train", {})
    with pytest.raises(InvalidOptions, match=message.replace(".", r"\.").replace("(", r"\(")):
        PretrainConfig.from_mapping({"embedding_length": 64, "heads": 4, **fields, "train": train})


def test_config_file_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("family: llama\nheads: 3\nembedding_length: 64\n")
    with pytest.raises(InvalidOptions, match=r"bad\.yaml: heads: embedding_length 64 is not divisible"):
        PretrainConfig.from_file(p)
    p.write_text("family: [llama\n")
    with pytest.raises(InvalidOptions, match=r"bad\.yaml:\d+: not valid YAML"):
        PretrainConfig.from_file(p)


def test_shipped_recipe_is_valid():
    from importlib import resources

    cfg = PretrainConfig.from_file(Path(str(resources.files("oficina.data").joinpath("pretrain/small.yaml"))))
    assert cfg.arch.family == "llama" and cfg.arch.kv_heads < cfg.arch.heads
    assert cfg.train.max_steps and cfg.train.max_length <= cfg.arch.context_length


@pytest.mark.parametrize("family,over,message", [
    ("llama", {"vocab_size": 400}, "vocab_size 400 does not match the tokenizer"),
    ("bert", {}, "needs a mask token"),
    ("t5", {}, "objective.mean_span_length: span corruption of 32-token blocks makes 2 spans"),
])
def test_tokenizer_mismatch_is_refused_before_any_compute(family, over, message, corpus, tmp_path, registry):
    folder = tmp_path / "plain-tokenizer"
    tiny.tokenizer().save_pretrained(folder)  # 300 tokens, no <mask>, no sentinels
    cfg = _config(family, tokenizer=str(folder), train={"run_dir": str(tmp_path / "run")}, **over)
    with pytest.raises(InvalidOptions, match=message):
        prepare(cfg, corpus, "x", registry)
    assert not (tmp_path / "run").exists()  # nothing tokenized, nothing trained


# -- tokenizer, corpus, batches -------------------------------------------------------------------
def test_tokenizer_train_writes_tokenizer_json_and_round_trips(corpus, tmp_path):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(out),
                 "--sentinels", "4"]) == 0
    data = json.loads((out / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and data["pre_tokenizer"]["type"] == "ByteLevel"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    sp = special_ids(tok)
    assert len(tok) <= 300 and sp.mask is not None and len(sp.sentinels) == 4 and sp.eos is not None
    text = "O gato dorme no sofá. 日本語 ✓"  # bytes never seen in the corpus still encode
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    with pytest.raises(InvalidOptions, match="vocab_size must be at least 265"):
        train_tokenizer(corpus, 200, sentinels=4)


def test_corpus_streams_documents_holds_out_every_nth_and_caches(tmp_path, tok_dir):
    from transformers import AutoTokenizer

    d = tmp_path / "c"
    d.mkdir()
    (d / "a.txt").write_text("first document\nstill first\n\nsecond\n\n\nthird\n")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": f"json doc {i}"}) + "\n" for i in range(7)))
    c = Corpus.open(d)
    docs = list(c.documents())
    assert [t for t, _ in docs[:3]] == ["first document\nstill first", "second", "third"]
    assert docs[3][1].endswith("b.jsonl:1") and len(docs) == 10
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    t = tokenize(c, tok, tmp_path / "tokens", val_split=0.2, seed=0)
    assert t.documents == (8, 2) and t.train_count + t.val_count == sum(
        len(tok(x, add_special_tokens=False)["input_ids"]) + 1 for x, _ in docs)
    assert t.train()[-1] == tok.eos_token_id
    stamp = (tmp_path / "tokens" / "train.bin").stat().st_mtime_ns
    assert tokenize(c, tok, tmp_path / "tokens", 0.2, 0).train_count == t.train_count
    assert (tmp_path / "tokens" / "train.bin").stat().st_mtime_ns == stamp  # reused, not redone
    (d / "b.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(FormatError, match=r"b\.jsonl:2: expected \{\"text\""):
        list(Corpus.open(d).documents())


def test_block_batches_resume_mid_epoch_and_are_seeded(tok_dir):
    from transformers import AutoTokenizer

    sp = special_ids(AutoTokenizer.from_pretrained(str(tok_dir)))
    tokens = np.arange(3, 3 + 40 * 16, dtype=np.uint16) % 290 + 8
    b = BlockBatches(tokens, 16, 4, OBJECTIVES["masked-token"], MaskedConfig(), sp, seed=3)
    full = [x.inputs for x in b.epoch(1)]
    tail = [x.inputs for x in b.epoch(1, start=4)]
    assert len(full) == len(b) == 10
    for x, y in zip(full[4:], tail):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(full[0]["input_ids"], next(b.epoch(2)).inputs["input_ids"])


def test_masked_tokens_follow_bert(tok_dir):
    from transformers import AutoTokenizer

    sp = special_ids(AutoTokenizer.from_pretrained(str(tok_dir)))
    blocks = np.random.default_rng(0).integers(20, 290, size=(64, 128))
    blocks[:, ::16] = sp.eos  # document boundaries are never masked
    out = OBJECTIVES["masked-token"].collate(blocks, MaskedConfig(), sp, torch.Generator().manual_seed(0))
    chosen = out["labels"] != IGNORE
    ids = torch.from_numpy(blocks)
    assert torch.equal(out["labels"][chosen], ids[chosen]) and chosen.any(1).all()
    assert not chosen[:, ::16].any()
    rate = chosen.float().mean().item()
    assert 0.12 < rate < 0.18
    masked = (out["input_ids"] == sp.mask) & chosen
    kept = (out["input_ids"] == ids) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85 and 0.06 < kept.sum() / chosen.sum() < 0.16
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])


def test_span_corruption_hides_spans_behind_sentinels_and_rebuilds(tok_dir):
    from transformers import AutoTokenizer

    sp = special_ids(AutoTokenizer.from_pretrained(str(tok_dir)))
    blocks = np.random.default_rng(1).integers(20, 290, size=(6, 40))
    cfg = SpanConfig()
    out = OBJECTIVES["span-corruption"].collate(blocks, cfg, sp, torch.Generator().manual_seed(0))
    noise, spans = cfg.spans(40)
    assert (noise, spans) == (6, 2)
    for row, src, tgt in zip(blocks.tolist(), out["input_ids"].tolist(), out["labels"].tolist()):
        src = src[:src.index(sp.eos)]
        tgt = tgt[:tgt.index(sp.eos)]
        assert [t for t in src if t in sp.sentinels] == list(sp.sentinels[:spans])
        fill = {}  # sentinel -> the tokens it hid
        for t in tgt:
            if t in sp.sentinels:
                key = t
                fill[key] = []
            else:
                fill[key].append(t)
        rebuilt = [x for t in src for x in (fill[t] if t in sp.sentinels else [t])]
        assert rebuilt == row and sum(map(len, fill.values())) == noise


# -- training every family ------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pretrain_each_family_registers_and_reloads(family, corpus, registry, tmp_path):
    import transformers

    from oficina.models.info import describe

    fam = FAMILIES[family]
    cfg = _config(family, vocab_size=300, train={"run_dir": str(tmp_path / "run")})
    plan = prepare(cfg, corpus, f"tiny-{family}", registry)
    r = pretrain(plan)
    assert r.loop.steps == 3 and r.loop.val_history and plan.size.parameters == sum(
        p.numel() for p in r.model.parameters())
    assert r.metrics["val_perplexity"] < r.perplexity_init * 1.5 and r.samples[0][1].startswith("Mia has")
    e = registry.get(f"tiny-{family}")
    assert e.producer["op"] == "pretrain" and e.producer["objective"] == fam.objective and e.parent is None
    assert e.metrics["val_perplexity"] == r.metrics["val_perplexity"]
    folder = registry.snapshot(e)
    info = describe(folder, "hf")
    a = cfg.arch
    assert (info.kind, info.layers, info.heads, info.embedding_length, info.feed_forward_length, info.vocab_size) \
        == (fam.kind, a.layers, a.heads, a.embedding_length, a.feed_forward_length, len(plan.tokenizer))
    reloaded = getattr(transformers, fam.model_class).from_pretrained(str(folder)).eval()
    r.model.eval()
    ids = torch.tensor([plan.tokenizer("Tom has a kite.", add_special_tokens=False)["input_ids"]])
    extra = {"decoder_input_ids": ids[:, :3]} if fam.kind == "encoder-decoder" else {}
    with torch.no_grad():
        assert torch.allclose(r.model(input_ids=ids, **extra).logits, reloaded(input_ids=ids, **extra).logits,
                              atol=1e-5)


def test_tiny_llama_beats_the_unigram_baseline_and_runs(corpus, registry, tmp_path):
    import oficina

    cfg = _config("llama", vocab_size=300, embedding_length=64, heads=4, kv_heads=2, feed_forward_length=128,
                  train={"max_steps": 40, "learning_rate": 1e-2, "eval_every": 40, "warmup_steps": 5,
                         "batch_size": 8, "run_dir": str(tmp_path / "run")})
    r = pretrain(prepare(cfg, corpus, "tiny-stories", registry))
    assert r.metrics["val_perplexity"] < 0.5 * r.unigram_perplexity
    m = oficina.load("tiny-stories", registry=registry)
    assert m.info.kind == "decoder-only" and m.chat_template is None
    assert isinstance(m.generate("Mia has a", num_predict=5, seed=1), str)


def test_cli_pretrain_plan_run_and_show(corpus, home, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("family: llama\nlayers: 1\nheads: 2\nembedding_length: 32\ncontext_length: 64\n"
                   "vocab_size: 300\nsamples: [Tom]\n"
                   "train: {max_steps: 2, batch_size: 4, max_length: 32, eval_every: 2}\n")
    assert main(["pretrain", "--config", str(cfg), "--data", str(corpus), "--out", "cli-tiny", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "memory estimate" in out and "Llama-like decoder-only" in out
    assert main(["pretrain", "-f", str(cfg), "-d", str(corpus), "-o", "cli-tiny", "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "unigram baseline" in out and "registered" in out and "samples" in out
    assert main(["show", "cli-tiny"]) == 0
    assert "decoder-only" in capsys.readouterr().out
    assert main(["run", "cli-tiny", "Tom has", "--num-predict", "3", "--seed", "1"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: llama\nheads: 3\nembedding_length: 64\n")
    assert main(["pretrain", "-f", str(bad), "-d", str(corpus), "--plan"]) == 1
    assert "heads: embedding_length 64 is not divisible by heads 3" in capsys.readouterr().err


def test_resumed_run_ends_with_the_same_weights(corpus, registry, tmp_path):
    """Masks are drawn per (seed, epoch, batch), so resuming from a checkpoint repeats them."""
    import shutil

    cfg = _config("bert", vocab_size=300, train={"max_steps": 6, "save_every": 3, "keep_checkpoints": 5,
                                                 "run_dir": str(tmp_path / "run")})
    whole = pretrain(prepare(cfg, corpus, None, registry))
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000006")
    resumed = pretrain(prepare(cfg, corpus, None, registry), resume=True)
    assert resumed.loop.resumed_from == 3 and resumed.loop.steps == 6
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
