"""What the template budget costs on the normal path: the real chat templates of the catalogue's
models rendered by oficina's budgeted sandbox (formats/template.py: own Jinja environment with
size checks, a 2 s deadline timer, streamed output) and by transformers' apply_chat_template,
interleaved, same messages, same tokenizer.

    python bench/bench_template.py            # needs smollm2 and gemma3:270m pulled
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MESSAGES = [{"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "Air scatters blue light more than red."},
            {"role": "user", "content": "And sunsets?"}]


def main(rounds: int = 7, per_round: int = 200) -> None:
    import tiny
    from oficina.formats.gguf import read_header
    from oficina.formats.template import render_chat
    from oficina.registry.registry import Registry

    reg = Registry(os.environ.get("OFICINA_HOME") or Path.home() / ".cache" / "oficina-test-home")
    tok = tiny.tokenizer()
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().split()[:3]}")
    print(f"{'template':<14}{'oficina µs':>12}{'transformers µs':>17}{'ratio':>8}  same output")
    for name in ("smollm2", "gemma3:270m"):
        snap = reg.snapshot(reg.get(name))
        template = read_header(next(snap.glob("*.gguf"))).get("tokenizer.chat_template")
        if not isinstance(template, str):
            print(f"{name:<14}(no chat template in its GGUF)")
            continue
        ours, theirs = [], []
        for _ in range(rounds):  # interleaved, so that load changes hit both alike
            t = time.perf_counter()
            for _ in range(per_round):
                a = render_chat(template, MESSAGES, tok)
            ours.append((time.perf_counter() - t) / per_round * 1e6)
            t = time.perf_counter()
            for _ in range(per_round):
                b = tok.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                            add_generation_prompt=True)
            theirs.append((time.perf_counter() - t) / per_round * 1e6)
        o, h = statistics.median(ours), statistics.median(theirs)
        print(f"{name:<14}{o:>12.0f}{h:>17.0f}{o / h:>8.2f}  {a == b}")


if __name__ == "__main__":
    main()
