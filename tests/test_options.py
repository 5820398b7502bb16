import pytest

from oficina.errors import InvalidOptions
from oficina.options import NAMES, PARAMS, Options


def test_defaults_are_ollamas():
    # api/types.go DefaultOptions() and docs/modelfile.md
    o = Options()
    assert (o.temperature, o.top_k, o.top_p, o.min_p, o.typical_p) == (0.8, 40, 0.9, 0.0, 1.0)
    assert (o.repeat_penalty, o.repeat_last_n, o.presence_penalty, o.frequency_penalty) == (1.0, 64, 0.0, 0.0)
    assert (o.num_predict, o.seed, o.stop) == (-1, -1, ())
    assert o.num_ctx == 4096


def test_every_issue_parameter_is_in_the_one_table():
    wanted = {"temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n",
              "presence_penalty", "frequency_penalty", "num_predict", "num_ctx", "seed", "stop",
              "num_thread", "num_batch",  # issue 12: Ollama's runtime options
              "guard",  # guard: oficina's filters (issue 16), a per-request setting like stop
              "rag"}  # rag: answer from a collection (issue 15), a Modelfile binding
    assert set(NAMES) == wanted
    assert [p.name for p in PARAMS] == list(Options.__dataclass_fields__)


@pytest.mark.parametrize("name,value", [
    ("temperature", -1), ("top_p", 2), ("top_p", -0.1), ("min_p", 1.5), ("typical_p", 3),
    ("repeat_penalty", 0), ("top_k", -1), ("num_ctx", 0), ("repeat_last_n", -2),
    ("temperature", "hot"), ("top_k", 1.5), ("seed", "x"), ("temperature", float("nan")),
    ("stop", ""), ("num_predict", True),
])
def test_out_of_range_is_one_clear_line(name, value):
    with pytest.raises(InvalidOptions) as e:
        Options.from_mapping({name: value})
    msg = str(e.value)
    assert name in msg and "\n" not in msg


def test_strings_from_modelfiles_and_flags_are_coerced():
    o = Options.from_pairs([("temperature", "0.2"), ("top_k", "20"), ("stop", "<|im_end|>"),
                            ("stop", "User:"), ("seed", "7")])
    assert o.temperature == 0.2 and o.top_k == 20 and o.seed == 7
    assert o.stop == ("<|im_end|>", "User:")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(InvalidOptions, match="unknown parameter 'temprature'.*temperature"):
        Options.from_mapping({"temprature": 1})


def test_layering_model_then_request():
    model = Options.from_mapping({"temperature": 0.1, "stop": ["x"]})
    run = model.merged({"top_k": 5})
    assert (run.temperature, run.top_k, run.stop) == (0.1, 5, ("x",))
    assert run.to_dict(changed_only=True) == {"temperature": 0.1, "top_k": 5, "stop": ["x"]}


def test_pairs_round_trip():
    o = Options.from_mapping({"temperature": 0.25, "stop": ["a", "b"], "num_ctx": 2048})
    assert Options.from_pairs(o.to_pairs()) == o
