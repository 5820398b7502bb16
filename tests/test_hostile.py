"""Hostile input (issue #11): every file here is built in the test to attack one weak spot, and
each must end in one clear ``oficina.errors`` line (``error: ...`` from the CLI, non-zero exit),
quickly, leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny
from oficina.errors import FormatError, OficinaError
from oficina.formats import template as tpl

ROOT = Path(__file__).resolve().parents[1]
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

NESTED_RANGE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
POWER = "{{ 10 ** (10 ** 10) }}"  # Jinja groups ** from the left
DOUBLING = ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}{{ ns.s }}")
HOSTILE_TEMPLATES = {"nested range": NESTED_RANGE, "power": POWER, "doubling": DOUBLING,
                     # sizes a machine can allocate (a terabyte would fail fast with MemoryError)
                     "repeat": "{{ 'a' * 5 * 10 ** 8 }}", "pad": "{{ 'x'.ljust(5 * 10 ** 8) }}",
                     "plus": "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}"
                             "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}"}


def oficina(*args, home: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OFICINA_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "oficina", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with exactly one ``error: ...`` line (no traceback) containing words."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "internal error" not in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    tiny.build("llama", folder)
    return folder


# -- 1. templates that never finish -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_is_stopped_by_the_budget(name, tok):
    start = time.perf_counter()
    with pytest.raises(FormatError, match="chat template"):
        tpl.render_chat(HOSTILE_TEMPLATES[name], MSGS, tok)
    assert time.perf_counter() - start < 6  # the 2 s budget, on a loaded machine


def test_budgeted_renderer_matches_transformers(tok):
    """The sandbox with budgets renders what apply_chat_template renders."""
    busy = ("{{ bos_token }}{% for m in messages %}{{ m.role | upper }}: {{ m.content | tojson }}"
            "{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
            "\nASSISTANT:{% endif %}{{ '-' * 3 }}{{ 2 ** 10 }}{{ 'a' ~ 'b' }}")
    for template in (tiny.CHAT_TEMPLATE, busy):
        for msgs in (MSGS, MSGS[1:]):
            assert tpl.render_chat(template, msgs, tok) == tok.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=True)


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_hostile_chat_template_jinja_in_an_hf_folder(llama_dir, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    for p in llama_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "chat_template.jinja").write_text(NESTED_RANGE)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    proc = oficina("run", str(folder), "hi", "--num-predict", "2", home=tmp_path / "home")
    one_error_line(proc, "chat template")
    assert time.perf_counter() - start < 100


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_hostile_template_in_a_gguf(llama_dir, tmp_path):
    from oficina.formats.gguf_export import export_gguf

    src = tmp_path / "src"
    src.mkdir()
    for p in llama_dir.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["chat_template"] = POWER
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    (src / "chat_template.jinja").unlink(missing_ok=True)
    export_gguf(src, tmp_path / "evil.gguf")
    proc = oficina("run", str(tmp_path / "evil.gguf"), "hi", "--num-predict", "2", home=tmp_path / "home")
    one_error_line(proc, "chat template")


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_hostile_modelfile_template(llama_dir, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {llama_dir}\nTEMPLATE \"\"\"{DOUBLING}\"\"\"\n")
    home = tmp_path / "home"
    assert oficina("create", "evil", "-f", str(mf), home=home).returncode == 0
    proc = oficina("run", "evil", "hi", "--num-predict", "2", home=home)
    one_error_line(proc, "chat template")


# -- 7. JSONL with raw line separators inside strings is valid --------------------------------------



def _jsonl_with_separators(path: Path, rows: list[dict]) -> Path:
    # ensure_ascii=False keeps U+2028/2029/0085 raw inside the strings, as scraped text has them
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_keeps_raw_unicode_line_separators(tmp_path):
    from oficina.align import pairs
    from oficina.evaluation.generation import check_item
    from oficina.evaluation.tasks import read_jsonl
    from oficina.tuning import data

    odd = "one\u2028two\u2029three\u0085four"
    rows = [{"instruction": f"say {odd}", "output": odd}, {"instruction": "b", "output": "c"}]
    ds = data.read(_jsonl_with_separators(tmp_path / "train.jsonl", rows))
    assert [r.fields["output"] for r in ds.records] == [odd, "c"]
    assert [r.where.rsplit(":", 1)[1] for r in ds.records] == ["1", "2"]

    prefs = [{"prompt": odd, "chosen": "yes\u2028", "rejected": "no"}]
    assert pairs.read(_jsonl_with_separators(tmp_path / "prefs.jsonl", prefs)).records[0].fields["prompt"] == odd

    with open(ROOT / "oficina/data/eval/gen.jsonl", encoding="utf-8") as f:
        raw = f.readline()
    item = json.loads(raw)
    item = {k: (v + "\u2028" if isinstance(v, str) else v) for k, v in item.items()}
    items = read_jsonl(_jsonl_with_separators(tmp_path / "gen.jsonl", [item]), check_item)
    assert len(items) == 1


def test_jsonl_line_numbers_count_newlines_only(tmp_path):
    from oficina.tuning import data

    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a\u2028b\u0085c"}\n\n{"text": 3\n', encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.jsonl:3: not valid JSON"):
        data.read(p)


def test_text_and_csv_keep_separators(tmp_path):
    from oficina.tuning import data

    t = tmp_path / "doc.txt"
    t.write_text("first\u2028still first\n\nsecond\n", encoding="utf-8")
    assert [r.fields["text"] for r in data.read(t).records] == ["first\u2028still first", "second"]
    c = tmp_path / "l.csv"
    c.write_text('text,label\n"good\u2028film",pos\nbad,neg\n', encoding="utf-8")
    ds = data.read(c)
    assert [r.fields["text"] for r in ds.records] == ["good\u2028film", "bad"]
    assert [r.where.rsplit(":", 1)[1] for r in ds.records] == ["2", "3"]


# -- hostile files ------------------------------------------------------------------------------------
def write_gguf(path: Path, meta: dict | None = None, layers_present: int = 1, tokens=None,
               tokenizer_model: str = "gpt2", drop: tuple[str, ...] = ()) -> Path:
    """A small llama GGUF (a few KB) whose header says what ``meta`` says."""
    import gguf
    import numpy as np

    d, vocab = 8, 6
    w = gguf.GGUFWriter(str(path), "llama")
    fields = {"llama.block_count": 1, "llama.context_length": 32, "llama.embedding_length": d,
              "llama.feed_forward_length": 16, "llama.attention.head_count": 2,
              "llama.attention.head_count_kv": 2, "llama.attention.layer_norm_rms_epsilon": 1e-5,
              **(meta or {})}
    for k, v in fields.items():
        if k in drop:
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    w.add_tokenizer_model(tokenizer_model)
    toks = tokens if tokens is not None else ["a", "b", "c", "ab", "<s>", "</s>"]
    if "tokenizer.ggml.tokens" not in drop:
        w.add_array("tokenizer.ggml.tokens", toks)
    if tokenizer_model == "gpt2" and "tokenizer.ggml.merges" not in drop:
        w.add_token_merges(["a b"])
    if tokenizer_model == "llama" and "tokenizer.ggml.scores" not in drop:
        w.add_token_scores([0.0] * len(toks))
    w.add_token_types([1] * len(toks))
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, d), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    for i in range(layers_present):
        for name, shape in (("attn_q", (d, d)), ("attn_k", (d, d)), ("attn_v", (d, d)),
                            ("attn_output", (d, d)), ("ffn_gate", (16, d)), ("ffn_up", (16, d)),
                            ("ffn_down", (d, 16)), ("attn_norm", (d,)), ("ffn_norm", (d,))):
            w.add_tensor(f"blk.{i}.{name}.weight", rng.standard_normal(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_copy(src: Path, dst: Path, config: dict | None = None) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- 2. declared sizes the file does not hold ----------------------------------------------------------
def test_gguf_declaring_100000_layers_is_refused_before_building(tmp_path):
    evil = write_gguf(tmp_path / "evil.gguf", {"llama.block_count": 100000})
    assert evil.stat().st_size < 8000
    start = time.perf_counter()
    proc = oficina("run", str(evil), "hi", "--num-predict", "1", home=tmp_path / "home", timeout=120)
    one_error_line(proc, "100,000 layers", "hold 1")
    assert time.perf_counter() - start < 60


def test_config_declaring_100000_layers_is_refused(llama_dir, tmp_path):
    folder = hf_copy(llama_dir, tmp_path / "evil", {"num_hidden_layers": 100000})
    proc = oficina("run", str(folder), "hi", "--num-predict", "1", home=tmp_path / "home")
    one_error_line(proc, "declares 100,000 layers")


def test_config_declaring_a_huge_width_is_refused(llama_dir, tmp_path):
    from oficina.api import load

    folder = hf_copy(llama_dir, tmp_path / "wide", {"hidden_size": 1 << 20, "intermediate_size": 1 << 22})
    with pytest.raises(FormatError, match="describes at least"):
        load(folder)


# -- 3. symlinks out of a pulled folder ----------------------------------------------------------------
def test_pull_refuses_a_link_out_of_the_folder(llama_dir, tmp_path, registry):
    from oficina.registry.sources import pull

    folder = hf_copy(llama_dir, tmp_path / "linked")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    (folder / "vocab.txt").symlink_to(secret)
    with pytest.raises(FormatError, match=r"vocab\.txt is a link to .*secret\.txt, outside the model folder"):
        pull(registry, str(folder), "linked")
    assert registry.find("linked") is None
    stored = [p.read_bytes() for p in registry.blobs.dir.iterdir()]
    assert secret.read_bytes() not in stored
    # a link that stays inside the folder is fine
    (folder / "vocab.txt").unlink()
    (folder / "LICENSE").write_text("MIT\n")
    pull(registry, str(folder), "linked")


def test_pull_refuses_a_linked_weights_file(llama_dir, tmp_path):
    folder = hf_copy(llama_dir, tmp_path / "linked")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    proc = oficina("pull", str(folder), home=tmp_path / "home")
    one_error_line(proc, "model.safetensors is a link to")


# -- 4. remote code -----------------------------------------------------------------------------------
@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_auto_map_is_refused_without_a_prompt(llama_dir, tmp_path):
    folder = hf_copy(llama_dir, tmp_path / "remote", {"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}})
    (folder / "modeling_evil.py").write_text("raise SystemExit('code from the model ran')\n")
    for args in (("pull", str(folder)), ("run", str(folder), "hi", "--num-predict", "1")):
        proc = oficina(*args, home=tmp_path / "home", input="y\n")  # a [y/N] prompt would read this
        line = one_error_line(proc, "remote: config.json", "auto_map", "EvilForCausalLM", "does not run code")
        assert "[y/N]" not in proc.stdout + proc.stderr, line
    assert not list((tmp_path / "home" / "blobs").iterdir())


# -- 6. internal errors that must be clean errors ------------------------------------------------------
@pytest.mark.parametrize("meta, tokens, model, drop, words", [
    ({"llama.embedding_length": "4096"}, None, "gpt2", (), ("llama.embedding_length", "str")),
    ({}, [1, 2, 3, 4, 5, 6], "gpt2", (), ("tokenizer.ggml.tokens", "string")),
    ({}, None, "llama", ("tokenizer.ggml.scores",), ("tokenizer.ggml.scores",)),
    ({}, None, "gpt2", ("tokenizer.ggml.merges",), ("tokenizer.ggml.merges",)),
])
def test_gguf_metadata_of_the_wrong_type(tmp_path, meta, tokens, model, drop, words):
    from oficina.models.info import describe

    evil = write_gguf(tmp_path / "evil.gguf", meta, tokens=tokens, tokenizer_model=model, drop=drop)
    with pytest.raises(FormatError) as e:
        describe(evil)
    for w in words:
        assert w in str(e.value)
    proc = oficina("pull", str(evil), home=tmp_path / "home")
    one_error_line(proc, *words)
    assert not list((tmp_path / "home" / "blobs").iterdir())  # refused before anything was copied


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_config_nested_100000_deep(llama_dir, tmp_path):
    folder = hf_copy(llama_dir, tmp_path / "deep")
    cfg = (folder / "config.json").read_text().rstrip().removesuffix("}")
    (folder / "config.json").write_text(cfg + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in (("pull", str(folder)), ("run", str(folder), "hi"), ("weights", str(folder))):
        proc = oficina(*args, home=tmp_path / "home")
        one_error_line(proc, "config.json", "nested 100,001 levels deep")


@pytest.mark.skipif(sys.platform != "linux", reason="a small tmpfs needs Linux namespaces")
def test_disk_full_while_writing_a_blob(tmp_path):
    """A real full disk: a 1 MiB tmpfs in a private mount namespace (unshare -rm)."""
    probe = subprocess.run(["unshare", "-rm", "true"], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rm is not allowed here")
    mnt, big = tmp_path / "mnt", write_gguf(tmp_path / "big.gguf")
    mnt.mkdir()
    with open(big, "ab") as f:  # past the end of the data: the header still validates
        f.write(os.urandom(3 << 20))
    script = f"""
import os, sys, subprocess
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', {str(mnt)!r}], check=True)
os.environ['OFICINA_HOME'] = {str(mnt)!r} + '/home'
from oficina.cli import main
rc1 = main(['pull', {str(big)!r}])          # refused up front: the copy cannot fit
from oficina.registry.registry import Registry
reg = Registry()
def chunks():                               # a stream of unknown length fills the disk
    for _ in range(40):
        yield os.urandom(1 << 16)
try:
    reg.blobs.put_stream(chunks())
    rc2 = 0
except Exception as e:
    print('error:', type(e).__name__, e, file=sys.stderr)
    rc2 = 1
left = sorted(os.listdir(reg.blobs.dir))
print('RESULT', rc1, rc2, left)
"""
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "RESULT 1 1 []" in proc.stdout, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: not enough disk space") and "needed" in lines[0], lines
    assert lines[1].startswith("error: RegistryError disk full while writing a blob"), lines


@pytest.fixture(scope="module")
def lora_dir(llama_dir, tmp_path_factory) -> Path:
    """A real PEFT LoRA for the tiny llama."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("lora") / "lora"
    peft.get_peft_model(model, cfg).save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    return out


def _modelfile(tmp_path: Path, body: str) -> Path:
    mf = tmp_path / "Modelfile"
    mf.write_text(body)
    return mf


def test_good_adapter_is_accepted(llama_dir, lora_dir, tmp_path, registry):
    from oficina.create import create

    entry = create(registry, "tuned", _modelfile(tmp_path, f"FROM {llama_dir}\nADAPTER {lora_dir}\n"))
    assert entry.manifest.adapters


def test_corrupt_adapter_is_refused_at_create(llama_dir, lora_dir, tmp_path, registry):
    from oficina.create import create

    bad = hf_copy(lora_dir, tmp_path / "bad")
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\n# tuned\nADAPTER {bad}\n")
    with pytest.raises(OficinaError, match=r"Modelfile line 3: ADAPTER: .*adapter_model\.safetensors is not a valid safetensors"):
        create(registry, "bad", mf)
    assert registry.find("bad") is None


def test_lora_with_wrong_shapes_is_refused_at_create(llama_dir, lora_dir, tmp_path, registry):
    import torch
    from safetensors.torch import load_file, save_file

    from oficina.create import create

    bad = hf_copy(lora_dir, tmp_path / "wrong")
    tensors = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] * 2)  # trained on a wider model
    save_file(tensors, bad / "adapter_model.safetensors")
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\nADAPTER {bad}\n")
    with pytest.raises(OficinaError, match=r"Modelfile line 2: ADAPTER: .*q_proj is \d+x\d+, but that weight of the base model is"):
        create(registry, "wrong", mf)
    proc = oficina("create", "wrong", "-f", str(mf), home=tmp_path / "home2")
    one_error_line(proc, "Modelfile line 2", "another model")


# -- 8. Go templates ------------------------------------------------------------------------------------
def test_go_range_with_index_and_element_variables(tok):
    t = "{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}={{ $m.Content }}|{{ .Content }};{{ end }}"
    assert tpl.render_chat(t, MSGS, tok) == "0:system=Be brief.|Be brief.;1:user=Hi|Hi;"
    t = "{{ range $m := .Messages }}{{ $m.Content }}{{ if eq $m.Role \"user\" }}!{{ end }}{{ end }}"
    assert tpl.render_chat(t, MSGS, tok) == "Be brief.Hi!"


@pytest.mark.parametrize("action", ['{{ printf "%s" .Prompt }}', "{{ index .Messages 0 }}",
                                    "{{ call .Prompt }}", '{{ template "other" . }}'])
def test_go_functions_are_refused_at_create_with_the_line(action, llama_dir, tmp_path, registry):
    from oficina.create import create

    mf = _modelfile(tmp_path, f'FROM {llama_dir}\nSYSTEM hi\nTEMPLATE """<s>{{{{ .System }}}}\n{action}"""\n')
    with pytest.raises(OficinaError, match=r"Modelfile line 3: TEMPLATE: "):
        create(registry, "gofn", mf)
    assert registry.find("gofn") is None
    assert not list(registry.blobs.dir.iterdir())  # refused before the base was copied


def test_jinja_syntax_error_is_refused_at_create(llama_dir, tmp_path, registry):
    from oficina.create import create

    mf = _modelfile(tmp_path, f"FROM {llama_dir}\nTEMPLATE \"\"\"{{% for m in messages %}}\n{{{{ m.content }}\"\"\"\n")
    with pytest.raises(OficinaError, match=r"Modelfile line 2: TEMPLATE: chat template line 2: .*"):
        create(registry, "badjinja", mf)
    proc = oficina("create", "badjinja", "-f", str(mf), home=tmp_path / "home")
    one_error_line(proc, "Modelfile line 2", "TEMPLATE")


# -- 9. wording ---------------------------------------------------------------------------------------
@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_parameter_errors_name_the_line(llama_dir, tmp_path):
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\n\nPARAMETER temperature 0.5\nPARAMETER top_p lots\n")
    proc = oficina("create", "p", "-f", str(mf), home=tmp_path / "home")
    one_error_line(proc, "Modelfile line 4", "top_p")
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\nPARAMETER num_ctx -5\n")
    one_error_line(oficina("create", "p", "-f", str(mf), home=tmp_path / "home"), "Modelfile line 2", "num_ctx")


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_adapter_that_is_not_an_adapter(llama_dir, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\nADAPTER {passwd}\n")
    line = one_error_line(oficina("create", "a", "-f", str(mf), home=tmp_path / "home"), "Modelfile line 2")
    assert "is not an adapter" in line and "no such file" not in line
    mf = _modelfile(tmp_path, f"FROM {llama_dir}\nADAPTER {tmp_path / 'missing'}\n")
    one_error_line(oficina("create", "a", "-f", str(mf), home=tmp_path / "home"), "Modelfile line 2", "no such file")


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_load_errors_name_the_model_not_the_snapshot(llama_dir, tmp_path):
    folder = hf_copy(llama_dir, tmp_path / "broken")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"] = {"type": "NoSuchModel"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    home = tmp_path / "home"
    assert oficina("pull", str(folder), "--name", "broken", home=home).returncode == 0
    line = one_error_line(oficina("run", "broken", "hi", "--num-predict", "1", home=home), "broken")
    snapshots = [p.name for p in (home / "snapshots").iterdir()]
    assert not any(s in line for s in snapshots), line
    assert "internal error" not in line


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_missing_tokenizer_entries_become_sentences(llama_dir, tmp_path):
    """A tokenizer that lacks what its type needs: a sentence, not KeyError: 'scores'."""
    evil = write_gguf(tmp_path / "noscores.gguf", tokenizer_model="llama", drop=("tokenizer.ggml.scores",))
    line = one_error_line(oficina("run", str(evil), "hi", home=tmp_path / "home"), "tokenizer.ggml.scores")
    assert "KeyError" not in line
    folder = hf_copy(llama_dir, tmp_path / "noadded")
    tj = json.loads((folder / "tokenizer.json").read_text())
    del tj["added_tokens"]
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    line = one_error_line(oficina("run", str(folder), "hi", home=tmp_path / "home"),
                          "noadded", "tokenizer lacks the entry 'added_tokens'")
    assert "KeyError" not in line


# -- 5. partial files after kill -9 -----------------------------------------------------------------
SLOW_PULL = """
import sys, time
import oficina.registry.store as store
original = store.iter_file
def slow(f):  # a pull over a slow disk or network: one chunk, then a long wait
    for chunk in original(f):
        yield chunk
        time.sleep(60)
store.iter_file = slow
from oficina.cli import main
sys.exit(main(['pull', sys.argv[1]]))
"""


def _big_gguf(path: Path) -> Path:
    write_gguf(path)
    with open(path, "ab") as f:  # bytes after the tensor data: the header still validates
        f.write(os.urandom(3 << 20))
    return path


def _start_slow_pull(source: Path, home: Path) -> tuple[subprocess.Popen, list[Path]]:
    env = {**os.environ, "OFICINA_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PULL, str(source)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        partials = list((home / "blobs").glob(".partial-*")) if (home / "blobs").is_dir() else []
        if partials and partials[0].stat().st_size > 0:
            return proc, partials
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the pull never started writing")


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_kill_9_during_pull_leaves_nothing_that_lasts(tmp_path):
    home, big, small = tmp_path / "home", _big_gguf(tmp_path / "big.gguf"), write_gguf(tmp_path / "small.gguf")
    proc, partials = _start_slow_pull(big, home)
    proc.kill()  # SIGKILL: no finally block runs
    proc.wait()
    assert all(p.exists() for p in partials)
    # what a catalogue pull killed an hour ago left (pip's wheels); a fresh one may be a live
    # command's work folder (quantize writes there before it takes the lock), so it stays
    stale, fresh = home / "tmp" / "tmpk9", home / "tmp" / "tmplive"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "model-1.0-py3-none-any.whl").write_bytes(os.urandom(1 << 16))
    old = time.time() - 2 * 3600
    for p in (stale / "model-1.0-py3-none-any.whl", stale):
        os.utime(p, (old, old))
    assert oficina("pull", str(small), home=home).returncode == 0  # the next writing command sweeps
    assert not list((home / "blobs").glob(".partial-*"))
    assert [p.name for p in (home / "tmp").iterdir()] == ["tmplive"]

    proc, partials = _start_slow_pull(big, home)
    proc.kill()
    proc.wait()
    proc = oficina("rm", "small", home=home)  # and so does rm (its gc)
    assert proc.returncode == 0, proc.stderr
    assert not list((home / "blobs").iterdir())


@pytest.mark.slow  # several `oficina` processes, each importing torch
def test_a_running_pull_keeps_its_partial_file(tmp_path):
    """Sweeping is only for the dead: a pull in progress holds the writers' lock, and another
    pull or an rm running meanwhile leaves its partial file (and its stored blobs) alone."""
    home, big, small = tmp_path / "home", _big_gguf(tmp_path / "big.gguf"), write_gguf(tmp_path / "small.gguf")
    proc, partials = _start_slow_pull(big, home)
    try:
        assert oficina("pull", str(small), home=home).returncode == 0
        assert oficina("rm", "small", home=home).returncode == 0
        assert all(p.exists() for p in partials)
    finally:
        proc.kill()
        proc.wait()


# -- 10. a pull and an rm at the same time ---------------------------------------------------------------
def test_concurrent_pull_and_rm_never_commit_a_missing_blob(tmp_path, home):
    import threading

    from oficina.registry.registry import Registry
    from oficina.registry.sources import pull

    n = 25
    mine = [write_gguf(tmp_path / f"a{i}.gguf", {"llama.context_length": 100 + i}) for i in range(n)]
    theirs = [write_gguf(tmp_path / f"b{i}.gguf", {"llama.context_length": 1000 + i}) for i in range(n)]
    problems: list[str] = []

    def puller():
        reg = Registry(home)
        for f in mine:
            try:
                entry = pull(reg, str(f), "a")
            except Exception as e:  # noqa: BLE001 -- any failure of a valid pull is the race
                problems.append(f"pull failed: {type(e).__name__}: {e}")
                continue
            gone = [d for d in entry.manifest.digests() if not reg.blobs.has(d)]
            if gone:
                problems.append(f"a@{entry.version} committed without {gone}")

    def remover():
        reg = Registry(home)
        for f in theirs:
            try:
                pull(reg, str(f), "b")
                reg.remove("b")
            except Exception as e:  # noqa: BLE001
                problems.append(f"pull/rm b failed: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=puller), threading.Thread(target=remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not problems, problems[:5]
    reg = Registry(home)
    versions = [v for e in reg.list() for v in reg.history(e.name)[0]]
    assert [e.name for e in reg.list()] == ["a:latest"] and len(versions) == n
    referenced = {d.replace(":", "-") for v in versions for d in v.manifest.digests() | {v.digest}}
    assert referenced <= {p.name for p in reg.blobs.dir.iterdir()}  # every version has its blobs
    reg.gc()  # with no writer left, gc collects what the deferred ones left
    assert {p.name for p in reg.blobs.dir.iterdir()} == referenced
