"""The CLI as a user types it: bad input gets one line on stderr, a non-zero exit, no traceback,
and nothing half-written in the registry."""

import json
import os
import subprocess
import sys

import pytest

from oficina.cli import main
from oficina.registry.registry import Registry
from tiny import build


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "tiny-llama"
    build("llama", d)
    return d


@pytest.fixture(scope="module")
def tiny_gguf(tiny_dir):
    from oficina.formats.gguf_export import export_gguf

    return export_gguf(tiny_dir, tiny_dir.parent / "tiny.gguf", dtype="f32")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def registry_files(home):
    blobs = home / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []


def test_unknown_model(capsys, home):
    code, _, err = run(capsys, "run", "nosuch", "hello")
    assert_one_line_error(code, err, "nosuch", "not found")


def test_missing_file(capsys, home):
    code, _, err = run(capsys, "pull", str(home / "missing.gguf"))
    assert_one_line_error(code, err, "missing.gguf")
    assert registry_files(home) == []


@pytest.mark.parametrize("cut", [0, 3, 40, 300])
def test_truncated_gguf_is_refused_and_nothing_is_written(capsys, home, tiny_gguf, tmp_path, cut):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:cut])
    code, _, err = run(capsys, "pull", str(bad))
    assert_one_line_error(code, err, "broken.gguf")
    assert registry_files(home) == [] and Registry(home).list() == []


def test_corrupt_gguf_bad_magic(capsys, home, tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + tiny_gguf.read_bytes()[4:])
    code, _, err = run(capsys, "pull", str(bad))
    assert_one_line_error(code, err, "magic")


def test_pickled_weights_are_not_loaded(capsys, home, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    code, _, err = run(capsys, "pull", str(d))
    assert_one_line_error(code, err, "pytorch_model.bin", "safetensors")


def test_modelfile_unknown_instruction_names_the_line(capsys, home, tiny_dir, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_dir}\nPARAMETER temperature 0.5\nFLY away\n")
    code, _, err = run(capsys, "create", "x", "-f", str(mf))
    assert_one_line_error(code, err, "line 3")
    assert Registry(home).list() == []


def test_modelfile_parameter_out_of_range(capsys, home, tiny_dir, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_dir}\nPARAMETER top_p 2\n")
    code, _, err = run(capsys, "create", "x", "-f", str(mf))
    assert_one_line_error(code, err, "top_p")
    assert Registry(home).list() == []


@pytest.mark.parametrize("flags,word", [(["--temperature", "-1"], "temperature"),
                                        (["--top-p", "2"], "top_p"),
                                        (["--num-ctx", "zero"], "num_ctx")])
def test_parameter_out_of_range(capsys, home, tiny_dir, flags, word):
    assert run(capsys, "pull", str(tiny_dir), "--name", "tiny")[0] == 0
    code, _, err = run(capsys, "run", "tiny", *flags, "hello")
    assert_one_line_error(code, err, word)


def test_hub_offline_is_a_clear_message(capsys, home):
    code, _, err = run(capsys, "pull", "hf://HuggingFaceTB/SmolLM2-135M")
    assert_one_line_error(code, err, "hf://HuggingFaceTB/SmolLM2-135M")


def test_registry_commands_end_to_end(capsys, home, tiny_dir, tmp_path):
    assert run(capsys, "pull", str(tiny_dir), "--name", "tiny")[0] == 0
    mf = tmp_path / "Modelfile"
    mf.write_text('FROM tiny\nPARAMETER temperature 0.1\nPARAMETER stop "</s>"\n'
                  'SYSTEM """You are terse."""\nMESSAGE user hi\nMESSAGE assistant hello\n'
                  'LICENSE "CC0"\n')
    code, out, _ = run(capsys, "create", "tiny", "-f", str(mf))
    assert code == 0 and "version 2" in out
    code, out, _ = run(capsys, "show", "tiny", "--json")
    d = json.loads(out)
    assert d["version"] == 2 and d["model_options"] == {"temperature": 0.1, "stop": ["</s>"]}
    assert d["system"] == "You are terse." and d["layers"] == 2 and d["license"] == ["CC0"]
    # show --modelfile re-creates the same model
    code, text, _ = run(capsys, "show", "tiny", "--modelfile")
    (tmp_path / "Roundtrip").write_text(text)
    assert run(capsys, "create", "again", "-f", str(tmp_path / "Roundtrip"))[0] == 0
    reg = Registry(home)
    a, b = reg.get("tiny").manifest, reg.get("again").manifest
    assert (a.files, a.params, a.system, a.messages, a.license, a.template) == \
           (b.files, b.params, b.system, b.messages, b.license, b.template)
    # history, rollback, cp, rm
    code, out, _ = run(capsys, "history", "tiny", "--json")
    hist = json.loads(out)
    assert [h["version"] for h in hist] == [1, 2] and hist[1]["parent"] == "tiny:latest@1"
    assert hist[1]["producer"]["op"] == "create"
    assert run(capsys, "rollback", "tiny")[0] == 0
    assert reg.get("tiny").version == 1
    assert run(capsys, "cp", "tiny", "copy")[0] == 0
    code, out, _ = run(capsys, "list", "--json")
    assert {e["name"] for e in json.loads(out)} == {"tiny:latest", "again:latest", "copy:latest"}
    assert run(capsys, "rm", "copy", "again")[0] == 0
    code, _, err = run(capsys, "show", "copy")
    assert_one_line_error(code, err, "copy")


def test_installed_command_runs(home, tiny_dir):
    """The real entry point, as a newcomer types it."""
    env = {**os.environ, "OFICINA_HOME": str(home)}
    pull = subprocess.run([sys.executable, "-m", "oficina", "pull", str(tiny_dir), "--name", "t"],
                          capture_output=True, text=True, env=env)
    assert pull.returncode == 0, pull.stderr
    r = subprocess.run([sys.executable, "-m", "oficina", "run", "t", "--temperature", "0",
                        "--num-predict", "5", "The cat"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "oficina", "run", "t", "--top-p", "2", "x"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: top_p")
