"""Evaluation: the batched scorer against an unbatched loop and against lm-evaluation-harness,
every task kind on tiny models (looped over the registry of kinds), bad task files, the side-by-
side report, the chart, the registry metrics and the `eval` command."""

import json
import math
import random

import pytest
import torch

import oficina
from oficina.cli import main
from oficina.errors import FormatError, OficinaError
from oficina.evaluation import KINDS, EvalConfig, Scorer, evaluate, parse_tasks, rolling_windows, run_tasks
from oficina.evaluation import stats
from oficina.evaluation.classification import macro_f1
from oficina.evaluation.generation import Generation, corpus, normalize
from oficina.evaluation.multiple_choice import STYLES, Item, fewshot
from oficina.evaluation.scoring import shared_contexts
from oficina.evaluation.tasks import builtin_path
from oficina.options import Options

from tiny import CORPUS, build, tokenizer

LONG_TEXT = " ".join(CORPUS * 3)  # ~1,000 tokens: several windows of a 256-token model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    out = {}
    for fam in ("llama", "gpt2", "bert"):
        build(fam, root / fam)
        out[fam] = root / fam
    out["bert-cls"] = _classifier(root / "bert-cls")
    return out


def _classifier(folder):
    from transformers import BertConfig, BertForSequenceClassification

    tok = tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                     pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(folders):
    return {k: oficina.load(v) for k, v in folders.items()}


# -- the scoring core -------------------------------------------------------------------------
@pytest.mark.parametrize("n,window,stride", [(1, 8, 8), (8, 8, 8), (9, 8, 8), (50, 8, 8), (50, 8, 3),
                                             (50, 8, 1), (7, 8, 2), (100, 16, 5)])
def test_rolling_windows_predict_every_token_once(n, window, stride):
    tokens = list(range(100, 100 + n))
    windows = rolling_windows(tokens, 0, window, stride)
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    for k, (ctx, cont) in enumerate(windows):
        full = ctx + cont
        assert len(full) - 1 <= window  # fits one forward pass
        start = tokens.index(cont[0])
        assert full == ([0] + tokens)[start - len(ctx) + 1:start + len(cont) + 1]  # contiguous text
        if k:
            assert len(cont) <= stride and len(ctx) >= min(window - stride + 1, start)


def test_rolling_windows_are_lm_evals():
    utils = pytest.importorskip("lm_eval.utils", reason="lm-eval not installed: pip install lm-eval")
    tokens = list(range(1, 60))
    for window, stride in [(8, 8), (8, 3), (16, 1), (64, 64)]:
        ref = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            tokens, 0, max_seq_len=window, context_len=window - stride + 1)]
        assert rolling_windows(tokens, 0, window, stride) == [(list(a), list(b)) for a, b in ref]


def _unbatched(lm, ctx, cont):
    """The plain loop: one sequence, full logits, log-softmax."""
    ids = torch.tensor([(ctx + cont)[:-1]])
    with torch.inference_mode():
        logp = lm(input_ids=ids).logits[0].log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


@pytest.mark.parametrize("family,runner", [("llama", "fast"), ("gpt2", "transformers")])
def test_runner_scores_equal_the_unbatched_loop(models, family, runner):
    """Scoring goes through the model's runner (the fast decoder at fp32 for the Llama family,
    transformers for GPT-2), in chunks and reusing shared contexts' KV, and gives the numbers of
    the plain full-forward loop (what the batched transformers scorer gave before) within 1e-4."""
    model = models[family]
    rng = random.Random(0)
    tokens = lambda lo, hi: [rng.randrange(3, 250) for _ in range(rng.randrange(lo, hi))]
    reqs = [(tokens(1, 40), tokens(1, 12)) for _ in range(25)]
    for _ in range(8):  # contexts shared by several choices: run once, their cache reused
        ctx = tokens(1, 30)
        reqs += [(ctx, tokens(1, 8)) for _ in range(rng.randrange(2, 5))]
    rng.shuffle(reqs)
    scorer = Scorer(model)
    assert scorer.runner.capabilities.name == runner, scorer.runner.capabilities.note
    assert sum(len(g) > 1 for g in shared_contexts(reqs)) >= 6
    want = [_unbatched(model.torch_model, ctx, cont) for ctx, cont in reqs]
    for num_batch in (512, 7):  # one pass, and chunks that split contexts and continuations
        scorer.runner.num_batch = num_batch
        got = scorer(reqs)
        for (ctx, cont), s, w in zip(reqs, got, want):
            assert s.tokens == len(cont)
            assert s.logprob == pytest.approx(w, rel=1e-4, abs=1e-4)
    scorer.runner.num_batch = 512


@pytest.fixture(scope="module")
def hflm(models):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install lm-eval): the "
                                          "comparison with lm-evaluation-harness is skipped")
    from lm_eval.models.huggingface import HFLM

    m = models["llama"]
    return HFLM(pretrained=m.torch_model, tokenizer=m.tokenizer, batch_size=4, device="cpu")


def test_loglikelihoods_match_lm_evaluation_harness(models, hflm):
    from lm_eval.api.instance import Instance

    pairs = [("The cat sat", " on the sofa"), ("Question: Where is Lisbon?\nAnswer:", " Portugal"),
             ("The cat sat", " on the dog"), ("Question: Where is Lisbon?\nAnswer:", " in France"),
             ("Paris is the capital of ", "France"), ("", "Language models predict"),
             ("O gato", " dorme no sofá. O céu é azul.")]
    ref = hflm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                             disable_tqdm=True)
    scorer = Scorer(models["llama"])
    reqs = [scorer.pair(c, x) for c, x in pairs]
    assert sum(len(g) == 2 for g in shared_contexts(reqs)) == 2  # two contexts, two continuations each
    ours = scorer(reqs)
    for (lp, greedy), s in zip(ref, ours):
        assert s.logprob == pytest.approx(lp, rel=1e-4, abs=1e-4)
        assert s.greedy == greedy


def test_perplexity_matches_lm_evaluation_harness(models, hflm, tmp_path):
    from lm_eval.api.instance import Instance

    (ref,) = hflm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (LONG_TEXT,), 0)],
                                        disable_tqdm=True)
    f = tmp_path / "long.txt"
    f.write_text(LONG_TEXT)
    r = run_tasks(models["llama"], "llama", parse_tasks(f"ppl:{f}"), EvalConfig())[f"ppl:{f}"]
    assert r.details["windows"] > 1 and r.details["window"] == hflm.max_length
    tokens = r.details["tokens"]
    assert r.metrics["ppl"].value == pytest.approx(math.exp(-ref / tokens), rel=1e-4)
    assert r.metrics["bits_per_byte"].value == pytest.approx(
        -ref / len(LONG_TEXT.encode()) / math.log(2), rel=1e-4)


def test_a_smaller_stride_gives_more_context(models, tmp_path):
    f = tmp_path / "long.txt"
    f.write_text(LONG_TEXT)
    spec = parse_tasks(f"ppl:{f}")
    disjoint = run_tasks(models["llama"], "m", spec, EvalConfig(window=64))[spec[0].name]
    strided = run_tasks(models["llama"], "m", spec, EvalConfig(window=64, stride=16))[spec[0].name]
    assert strided.details["tokens"] == disjoint.details["tokens"]  # same tokens, scored once
    assert strided.details["windows"] > disjoint.details["windows"]
    assert strided.details["stride"] == 16


# -- the shipped sets and every kind --------------------------------------------------------------
MIN_ITEMS = {"ppl": 1, "gen": 20, "mc": 40, "cls": 20, "truthful": 20}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_ships_a_set_that_loads(kind):
    spec, = parse_tasks(kind)
    assert spec.name == f"{kind}:builtin" and spec.path.is_file()
    items = KINDS[kind].load(spec.path)
    assert len(items) >= MIN_ITEMS[kind]
    assert set(KINDS[kind].headline)


def test_shipped_sets_are_licensed_and_sized():
    assert "CC0" in builtin_path("LICENSE").read_text()
    assert "CC0" in builtin_path("README.md").read_text()
    assert 3000 < len(builtin_path("heldout.txt").read_bytes()) < 20000
    answers = [json.loads(x)["answer"] for x in builtin_path("mc.jsonl").read_text().splitlines()]
    assert set(answers) == {0, 1, 2, 3}  # the right answer is not always in one place


# Which tiny model runs each kind, with the file of that kind's shipped set.
RUNS_ON = {"ppl": "llama", "gen": "llama", "mc": "gpt2", "truthful": "llama", "cls": "bert-cls"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_runs_and_reports_its_headline(models, kind):
    spec = parse_tasks(kind)
    cfg = EvalConfig(limit=4, options={"num_predict": 4}, bootstrap=20)
    result = run_tasks(models[RUNS_ON[kind]], RUNS_ON[kind], spec, cfg)[spec[0].name]
    for name in KINDS[kind].headline:
        m = result.metrics[name]
        assert math.isfinite(m.value)
        if m.scale is not None:
            assert 0 <= m.value <= m.scale
    json.dumps(result.to_dict())  # serialisable as is


# -- task details -----------------------------------------------------------------------------
def test_multiple_choice_picks_the_best_scored_choice(models, tmp_path):
    f = tmp_path / "mc.jsonl"
    rows = [{"question": "Where is Lisbon?", "choices": ["Portugal", "France", "the sofa"], "answer": 0},
            {"question": "The cat sat on the", "choices": ["sofa", "capital of France"], "answer": 0},
            {"question": "Language models predict", "choices": ["the next token", "the sky"], "answer": 1}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    model = models["llama"]
    for style in STYLES:
        r = run_tasks(model, "m", parse_tasks(f"mc:{f}"), EvalConfig(mc_style=style))[f"mc:{f}"]
        scorer = Scorer(model)
        items = [Item(x["question"], tuple(x["choices"]), x["answer"]) for x in rows]
        for it, pred in zip(items, r.details["predictions"]):
            ctx = STYLES[style].prompt(it)
            lls = [s.logprob for s in scorer([scorer.pair(ctx, " " + t) for t in STYLES[style].targets(it)])]
            assert pred == max(range(len(lls)), key=lls.__getitem__)
        hits = [float(p == it.answer) for p, it in zip(r.details["predictions"], items)]
        assert r.metrics["acc"].value == pytest.approx(sum(hits) / 3)
        assert r.metrics["acc"].per_item == hits


def test_fewshot_examples_are_fixed_and_exclude_the_item():
    items = [Item(f"q{i}", ("a", "b"), 0) for i in range(10)]
    for i in range(10):
        shots = fewshot(items, i, 3, 1234)
        assert len(shots) == 3 and items[i] not in shots
        assert shots == fewshot(items, i, 3, 1234)
    with pytest.raises(OficinaError, match="only 9 other items"):
        fewshot(items, 0, 10, 1234)


def test_letters_style_scores_letters():
    it = Item("Capital of France?", ("Lyon", "Paris"), 1)
    assert STYLES["letters"].prompt(it) == "Capital of France?\nA. Lyon\nB. Paris\nAnswer:"
    assert STYLES["letters"].targets(it) == ["A", "B"]


class _Parrot:
    """A stand-in model whose answers are given: to check the generation metrics."""

    def __init__(self, answers):
        self.answers, self.options, self.seen = list(answers), Options(), []

    def generate(self, prompt, **options):
        self.seen.append(options)
        return self.answers.pop(0)


def test_generation_metrics_and_recorded_options(tmp_path):
    items = Generation().load(builtin_path("gen.jsonl"))[:4]
    perfect = _Parrot([" " + it.references[0] + "\n" for it in items])
    r = Generation().run(perfect, items, EvalConfig(options={"num_predict": 20}, bootstrap=10), "p")
    m = {k: v.value for k, v in r.metrics.items()}
    assert m["bleu"] == pytest.approx(100) and m["chrf"] == pytest.approx(100)
    assert m["rouge1"] == m["rougeL"] == m["exact_match"] == 1.0
    assert r.details["options"]["temperature"] == 0 and r.details["options"]["num_predict"] == 20
    assert perfect.seen[0]["num_predict"] == 20
    wrong = Generation().run(_Parrot(["zzz"] * 4), items, EvalConfig(bootstrap=10), "p")
    assert wrong.metrics["exact_match"].value == 0 and wrong.metrics["bleu"].value < 5


def test_text_normalisation_and_multiple_references():
    assert normalize("The  Pacific Ocean!") == "pacific ocean"
    import sacrebleu

    # padding a short reference list with its first reference changes nothing
    a, b = "the cat sat on the sofa", "o gato dorme no sofá"
    assert corpus(sacrebleu.corpus_bleu, [a, b], [(a, "q"), (b,)]) == pytest.approx(100)
    assert corpus(sacrebleu.corpus_chrf, [a, b], [("q", a), (b,)]) == pytest.approx(100)


def test_classification_matches_the_head(models, tmp_path):
    f = tmp_path / "cls.jsonl"
    texts = ["The cat sat on the sofa.", "O céu é azul.", "Paris is the capital of France.", "dog"]
    labels = ["positive", 0, "negative", 1]
    f.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels)))
    model = models["bert-cls"]
    r = run_tasks(model, "c", parse_tasks(f"cls:{f}"), EvalConfig(batch_tokens=128))[f"cls:{f}"]
    from transformers import BertForSequenceClassification

    head = BertForSequenceClassification.from_pretrained(model.loaded.folder).eval()
    with torch.inference_mode():
        preds = [int(head(**model.tokenizer(t, return_tensors="pt")).logits.argmax()) for t in texts]
    assert r.details["predictions"] == preds
    truth = [1, 0, 0, 1]
    assert r.metrics["acc"].value == pytest.approx(sum(p == y for p, y in zip(preds, truth)) / 4)
    assert sum(map(sum, r.details["confusion"])) == 4 and r.details["labels"] == ["negative", "positive"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "positive"}\n{"text": "y", "label": "neutral"}\n')
    with pytest.raises(FormatError, match=r"bad.jsonl:2: label 'neutral'.*negative, positive"):
        run_tasks(model, "c", parse_tasks(f"cls:{bad}"), EvalConfig())


def test_macro_f1():
    assert macro_f1([(0, 0), (1, 1)], 2) == 1.0
    assert macro_f1([(0, 0), (0, 1), (1, 1), (1, 1)], 2) == pytest.approx((2 / 3 + 0.8) / 2)


def test_stats_follow_lm_eval():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert stats.mean_stderr(xs) == pytest.approx(math.sqrt(0.3) / math.sqrt(5))
    diff, se = stats.paired([0, 0, 0, 0], [1, 1, 1, 1])
    assert diff == 1 and se == 0 and stats.significant(diff, se)
    diff, se = stats.paired([0, 1, 0, 1], [1, 0, 1, 0])
    assert diff == 0 and not stats.significant(diff, se)


# -- bad input ------------------------------------------------------------------------------------
BAD = [
    ("mc", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a", "b"], "answer": 2}',
     r":2: 'answer' index 2 is out of range: there are 2 choices \(valid: 0 to 1\)"),
    ("mc", '{"question": "q", "choices": ["a", "b"], "answer": -1}', r":1: 'answer' index -1 is out of range"),
    ("mc", '{"question": "q", "choices": ["a", "b"], "answer": "a"}', r":1: 'answer' must be an integer"),
    ("mc", '{"question": "q", "choices": ["a"], "answer": 0}', r":1: 'choices' must be a list of at least two"),
    ("mc", '\n\n{"question": "q", "choices": ["a", "b"], "answer": 0', r":3: not valid JSON"),
    ("mc", '["q", "a"]', r":1: expected a JSON object"),
    ("truthful", '{"question": "q", "choices": ["a", "b"], "answer": 0, "popular": 0}', r":1: 'popular' must name a false"),
    ("truthful", '{"question": "q", "choices": ["a", "b"], "answer": 0}', r":1: 'popular' must be an integer"),
    ("gen", '{"prompt": "p"}', r":1: 'reference' must be"),
    ("gen", '{"prompt": "", "reference": "r"}', r":1: 'prompt' must be a non-empty string"),
    ("cls", '{"text": "t", "label": [1]}', r":1: 'label' must be"),
    ("ppl", '', r"empty text"),
    ("mc", '\n', r"no items"),
]


@pytest.mark.parametrize("kind,text,message", BAD)
def test_malformed_task_files_name_file_and_line(tmp_path, kind, text, message):
    f = tmp_path / ("bad.txt" if kind == "ppl" else "bad.jsonl")
    f.write_text(text)
    with pytest.raises(FormatError, match="bad." + ("txt" if kind == "ppl" else "jsonl") + ".*" + message):
        KINDS[kind].load(f)


def test_task_specs(tmp_path):
    assert [s.name for s in parse_tasks("ppl, mc:builtin ,truthful")] == \
        ["ppl:builtin", "mc:builtin", "truthful:builtin"]
    with pytest.raises(OficinaError, match="unknown task kind 'bleu'.*ppl, gen, mc, cls, truthful"):
        parse_tasks("bleu:x.jsonl")
    with pytest.raises(OficinaError, match="task file not found: nope.jsonl"):
        parse_tasks("mc:nope.jsonl")
    with pytest.raises(OficinaError, match="no tasks"):
        parse_tasks(" , ")


@pytest.mark.parametrize("family,can", [("bert", "none"), ("bert-cls", "cls")])
def test_a_model_that_cannot_run_a_task_says_what_it_can(models, family, can):
    with pytest.raises(OficinaError) as e:
        run_tasks(models[family], family, parse_tasks("ppl"), EvalConfig())
    msg = str(e.value)
    assert "cannot run ppl (perplexity)" in msg and "decoder-only" in msg and "encoder-only" in msg
    assert msg.endswith(f"tasks it can run: {can}")
    with pytest.raises(OficinaError, match="needs a sequence-classification head.*can run: ppl, gen, mc, truthful"):
        run_tasks(models["llama"], "llama", parse_tasks("cls"), EvalConfig())


# -- side by side -----------------------------------------------------------------------------------
def test_report_compares_models_and_records_what_reproduces_it(models, folders, tmp_path):
    from oficina.evaluation.chart import draw

    specs = parse_tasks("ppl,mc")
    cfg = EvalConfig(limit=6, window=64)
    report = evaluate([str(folders["llama"]), str(folders["gpt2"]), str(folders["llama"])], specs, cfg)
    assert [m.label for m in report.models] == ["llama", "gpt2", "llama (2)"]
    d = report.to_dict()
    assert d["oficina"] == oficina.__version__ and d["config"]["window"] == 64
    assert all(t["digest"].startswith("sha256:") for t in d["tasks"])
    assert report.models[0].digest == report.models[2].digest != report.models[1].digest
    # the same model twice: no change, and the paired interval says so
    diff, _, sig = report.delta("llama (2)", "mc:builtin", "acc")
    assert diff == 0 and not sig
    assert d["deltas"]["llama (2)"]["ppl:builtin.ppl"]["diff"] == pytest.approx(0, abs=1e-6)
    assert report.metric("gpt2", "ppl:builtin", "ppl").value != report.metric("llama", "ppl:builtin", "ppl").value
    saved = json.loads(report.save(tmp_path / "r.json").read_text())
    assert saved["results"]["gpt2"]["mc:builtin"]["metrics"]["acc"]["ci95"] is not None
    png = draw(report, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_writes_table_json_chart_and_registry_metrics(folders, registry, capsys, tmp_path):
    from oficina.registry.sources import import_path

    import_path(registry, folders["llama"], "tiny")
    import_path(registry, folders["gpt2"], "tiny2")
    out = tmp_path / "cmp"
    code = main(["eval", "tiny", "tiny2", "--tasks", "ppl:builtin,mc", "--limit", "5",
                 "--window", "64", "--out", str(out), "--save"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "MODEL" in text and "tiny2" in text and "Δ" in text and "acc_norm" in text
    assert "tokens" in text and "metrics saved to tiny:latest@1, tiny2:latest@1" in text
    result = json.loads((out.parent / "cmp.json").read_text())
    assert [m["ref"] for m in result["models"]] == ["tiny:latest@1", "tiny2:latest@1"]
    assert (out.parent / "cmp.png").stat().st_size > 1000
    entry = registry.get("tiny")
    assert set(entry.metrics) == {"ppl:builtin.ppl", "ppl:builtin.bits_per_byte", "mc:builtin.acc",
                                  "mc:builtin.acc_norm"}
    assert main(["history", "tiny"]) == 0
    assert "mc:builtin.acc=" in capsys.readouterr().out


def test_eval_command_errors_are_one_line(folders, capsys, home, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    for argv, words in [(["eval", str(folders["llama"]), "--tasks", f"mc:{bad}"], ["bad.jsonl:1", "out of range"]),
                        (["eval", str(folders["bert"]), "--tasks", "ppl", "--no-chart"], ["cannot run ppl", "can run: none"]),
                        (["eval", str(folders["llama"]), "--tasks", "xyz"], ["unknown task kind"])]:
        code = main(argv + ["--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err


# -- the real model -------------------------------------------------------------------------------
@pytest.mark.real
@pytest.mark.slow
def test_smollm2_perplexity_and_multiple_choice(smollm2):
    results = run_tasks(smollm2, "smollm2", parse_tasks("ppl,mc"), EvalConfig(limit=12))
    assert smollm2.runner.capabilities.name == "fast", smollm2.runner.capabilities.note  # packed Q4_1
    ppl = results["ppl:builtin"]
    assert 3 < ppl.metrics["ppl"].value < 60  # a held-out English story for a 135M model
    tokens, nbytes = ppl.details["tokens"], ppl.details["bytes"]
    assert ppl.metrics["bits_per_byte"].value == pytest.approx(
        math.log(ppl.metrics["ppl"].value) * tokens / nbytes / math.log(2))
    assert results["mc:builtin"].metrics["acc"].value >= 0.25  # easy questions: above chance
