"""Which grammar engine constrains decoding: xgrammar vs lm-format-enforcer on smollm2's
tokenizer (49,152 tokens), for the same JSON schemas, walking the same valid answer token by
token. Reports setup (tokenizer tables), compile per schema, and mask time per token.

    OMP_NUM_THREADS=1 python bench/bench_grammar.py            # writes bench/bench_grammar.txt

lm-format-enforcer's transformers integration does not import under transformers 5, so its
tokenizer table is built here the way that integration builds it (regular tokens decoded after a
"0" token to detect word starts).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

SCHEMAS = [
    ({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
      "required": ["city", "population"]}, {"city": "Lisbon", "population": 545923}),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}},
                                       "ok": {"type": "boolean"}}, "required": ["tags", "ok"]},
     {"tags": ["red", "green", "blue"], "ok": True}),
    ({"type": "object", "properties": {"inner": {"type": "object", "properties": {"x": {"type": "number"},
                                                                                 "y": {"type": "number"}},
                                                 "required": ["x", "y"]}, "name": {"type": "string"}},
      "required": ["inner", "name"]}, {"inner": {"x": 1.5, "y": -2.25}, "name": "a point on the plane"}),
]


def tokenizer():
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import real_home

    folders = sorted((real_home() / "cache").glob("gguf-*"))
    for f in folders:
        tok = AutoTokenizer.from_pretrained(str(f))
        if len(tok) == 49152:
            return tok
    raise SystemExit("smollm2 is not in the test registry (pytest tests/test_real_models.py pulls it)")


def bench_xgrammar(tok, eos):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    setup = time.perf_counter() - t0
    compiles, steps = [], []
    for schema, answer in SCHEMAS:
        t0 = time.perf_counter()
        g = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        compiles.append(time.perf_counter() - t0)
        m = xgr.GrammarMatcher(g)
        mask = xgr.allocate_token_bitmask(1, len(tok))
        logits = torch.zeros(1, len(tok))
        for t in tok.encode(json.dumps(answer), add_special_tokens=False):
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            xgr.apply_token_bitmask_inplace(logits, mask)
            steps.append(time.perf_counter() - t0)
            assert m.accept_token(t), "xgrammar rejected a valid answer"
    return setup, compiles, steps


def bench_lmfe(tok, eos):
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer
    from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData

    t0 = time.perf_counter()
    zero = tok.encode("0", add_special_tokens=False)[-1]
    special = set(tok.all_special_ids)
    regular = []
    for i in range(len(tok)):
        if i in special:
            continue
        after0 = tok.decode([zero, i])[1:]
        regular.append((i, after0, len(after0) > len(tok.decode([i]))))
    data = TokenEnforcerTokenizerData(regular, lambda ids: tok.decode(ids).rstrip("\ufffd"), eos, False, len(tok))
    setup = time.perf_counter() - t0
    compiles, steps = [], []
    for schema, answer in SCHEMAS:
        t0 = time.perf_counter()
        enforcer = TokenEnforcer(data, JsonSchemaParser(schema))
        compiles.append(time.perf_counter() - t0)
        ids: list[int] = []
        logits = torch.zeros(len(tok))
        for t in tok.encode(json.dumps(answer), add_special_tokens=False):
            t0 = time.perf_counter()
            allowed = enforcer.get_allowed_tokens(ids)
            allowed = getattr(allowed, "allowed_tokens", allowed)
            keep = torch.full_like(logits, float("-inf"))
            keep[torch.as_tensor(list(allowed), dtype=torch.long)] = 0
            steps.append(time.perf_counter() - t0)
            ids.append(t)
    return setup, compiles, steps


def main() -> None:
    torch.set_num_threads(1)
    tok = tokenizer()
    eos = tok.eos_token_id
    rows = []
    for name, fn in (("xgrammar", bench_xgrammar), ("lm-format-enforcer", bench_lmfe)):
        setup, compiles, steps = fn(tok, eos)
        steps_ms = sorted(s * 1000 for s in steps)
        rows.append((name, setup, statistics.mean(compiles) * 1000, statistics.median(steps_ms),
                     steps_ms[int(0.95 * (len(steps_ms) - 1))], len(steps_ms)))
    load = open("/proc/loadavg").read().split()[:3]
    lines = [f"grammar engines on smollm2's tokenizer ({len(tok)} tokens), 1 thread, load average {' '.join(load)}",
             f"{'engine':<20} {'setup s':>8} {'compile ms':>11} {'mask p50 ms':>12} {'mask p95 ms':>12} {'tokens':>7}"]
    for name, setup, comp, p50, p95, n in rows:
        lines.append(f"{name:<20} {setup:>8.2f} {comp:>11.2f} {p50:>12.3f} {p95:>12.3f} {n:>7}")
    text = "\n".join(lines)
    print(text)
    (Path(__file__).with_suffix(".txt")).write_text(text + "\n")


if __name__ == "__main__":
    main()
