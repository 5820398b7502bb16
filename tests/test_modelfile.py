"""Modelfile parse <-> serialize. References: Ollama's docs/modelfile.mdx (examples quoted below and
in tests/data/modelfiles/) and parser/parser_test.go (its cases ported as input -> expected rows)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oficina import modelfile as mf
from oficina.errors import ModelfileError, OficinaError
from oficina.modelfile import EXTRA, ROLES, Modelfile, parse, parse_file
from oficina.options import Options

DATA = Path(__file__).parent / "data" / "modelfiles"

# The Llama 3 template as `ollama show --modelfile llama3.2` prints it (docs/modelfile.mdx).
LLAMA3_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n"
    "{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{{ .Response }}<|eot_id|>"
)


# -- the examples in Ollama's docs/modelfile.mdx ---------------------------------------------------

def test_doc_basic_example_mario():
    m = parse_file(DATA / "mario.Modelfile")
    assert m == Modelfile(
        from_="llama3.2",
        parameters=[("temperature", "1"), ("num_ctx", "4096")],
        system="You are Mario from super mario bros, acting as an assistant.",
    )


def test_doc_ollama_show_example():
    m = parse_file(DATA / "ollama-show-llama3.2.Modelfile")
    assert m.from_.startswith("/Users/pdevine/.ollama/models/blobs/sha256-00e1317c")
    assert m.template == LLAMA3_TEMPLATE  # Go-template braces and blank lines kept verbatim
    assert m.parameters == [("stop", "<|start_header_id|>"), ("stop", "<|end_header_id|>"),
                            ("stop", "<|eot_id|>"), ("stop", "<|reserved_special_token")]


def test_doc_examples_feed_options():
    opts = Options.from_pairs(parse_file(DATA / "mario.Modelfile").parameters)
    assert (opts.temperature, opts.num_ctx) == (1.0, 4096)
    opts = Options.from_pairs(parse_file(DATA / "ollama-show-llama3.2.Modelfile").parameters)
    assert opts.stop == ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                         "<|reserved_special_token")


# The shorter code blocks of docs/modelfile.mdx, verbatim; those without FROM get "FROM llama3.2".
DOC_SNIPPETS = [
    ("FROM <model name>:<tag>\n", "from_", "<model name>:<tag>"),
    ("FROM llama3.2\n", "from_", "llama3.2"),
    ("FROM <model directory>\n", "from_", "<model directory>"),
    ("FROM ./ollama-model.gguf\n", "from_", "./ollama-model.gguf"),
    ('TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}'
     '<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""\n', "template",
     "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}"
     "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"),
    ('SYSTEM """<system message>"""\n', "system", "<system message>"),
    ("ADAPTER <path to safetensor adapter>\n", "adapters", ["<path to safetensor adapter>"]),
    ("ADAPTER ./ollama-lora.gguf\n", "adapters", ["./ollama-lora.gguf"]),
    ('LICENSE """\n<license text>\n"""\n', "license", ["\n<license text>\n"]),
    ("MESSAGE user Is Toronto in Canada?\nMESSAGE assistant yes\nMESSAGE user Is Sacramento in Canada?\n"
     "MESSAGE assistant no\nMESSAGE user Is Ontario in Canada?\nMESSAGE assistant yes\n", "messages",
     [("user", "Is Toronto in Canada?"), ("assistant", "yes"), ("user", "Is Sacramento in Canada?"),
      ("assistant", "no"), ("user", "Is Ontario in Canada?"), ("assistant", "yes")]),
    ("REQUIRES <version>\n", "extra", [("requires", "<version>")]),
]


@pytest.mark.parametrize("snippet,attr,expected", DOC_SNIPPETS)
def test_doc_snippets(snippet, attr, expected):
    text = snippet if snippet.startswith("FROM") else "FROM llama3.2\n" + snippet
    m = parse(text)
    assert getattr(m, attr) == expected
    assert parse(m.to_text()) == m


@pytest.mark.parametrize("syntax", ["PARAMETER <parameter> <parametervalue>\n", "MESSAGE <role> <message>\n",
                                    "# comment\nINSTRUCTION arguments\n"])
def test_doc_syntax_lines_with_placeholders_are_not_modelfiles(syntax):
    # These blocks describe the syntax; Ollama's parser rejects them too.
    with pytest.raises(ModelfileError):
        parse("FROM llama3.2\n" + syntax)


# -- cases from Ollama's parser/parser_test.go, as (input, expected) rows ---------------------------

@pytest.mark.parametrize("text,expected", [
    ("FROM \"FOO  BAR  \"", "FOO  BAR  "),
    ("FROM     FOOO BAR    ", "FOOO BAR"),
    ("FROM /what/is/the path ", "/what/is/the path"),
    ("FROM llama3:7b-instruct-q4_K_M", "llama3:7b-instruct-q4_K_M"),
    ("PARAMETER param1 value1\nFROM foo", "foo"),
    ("PARAMETER what the \nFROM lemons make lemonade ", "lemons make lemonade"),
])
def test_ollama_from_cases(text, expected):
    assert parse(text).from_ == expected


def test_ollama_trim_space():
    m = parse('\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\n'
              'PARAMETER param1        value1\nTEMPLATE """   {{ .System }}\n\n{{ .Prompt }}   """    \n')
    assert m == Modelfile(from_="     model 1", adapters=["adapter3"], license=["MIT       "],
                          parameters=[("param1", "value1")], template="   {{ .System }}\n\n{{ .Prompt }}   ")


@pytest.mark.parametrize("value,expected", [
    ('"""\nThis is a\nmultiline system.\n"""\n\t\t\t', "\nThis is a\nmultiline system.\n"),
    ('"""\nThis is a\nmultiline system."""', "\nThis is a\nmultiline system."),
    ('"""This is a\nmultiline system."""', "This is a\nmultiline system."),
    ('"""\nThis is a multiline system with "quotes".\n"""', '\nThis is a multiline system with "quotes".\n'),
    ('""""""', ""),
    ('""', ""),
    ('"\'"', "'"),
    ('"""\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
    ("你好👋", "你好👋"),
])
def test_ollama_quoted_cases(value, expected):
    assert parse(f"FROM foo\nSYSTEM {value}\n").system == expected


@pytest.mark.parametrize("line,name,value", [
    ("num_ctx 1", "num_ctx", "1"), ("top_p 1.0", "top_p", "1.0"), ("min_p 0.05", "min_p", "0.05"),
    ("stop ### User:", "stop", "### User:"), ("stop ### User: ", "stop", "### User:"),
    ('stop "### User:"', "stop", "### User:"), ('stop "### User: "', "stop", "### User: "),
    ('stop """### User:"""', "stop", "### User:"), ('stop """### User:\n"""', "stop", "### User:\n"),
    ("stop <|endoftext|>", "stop", "<|endoftext|>"), ("stop </s>", "stop", "</s>"),
    ("penalize_newline true", "penalize_newline", "true"),  # names are not checked here
])
def test_ollama_parameter_cases(line, name, value):
    assert parse(f"FROM foo\nPARAMETER {line}\n").parameters == [(name, value)]


def test_ollama_messages():
    m = parse('FROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t'
              "\nMESSAGE user Hey there!\nMESSAGE assistant Hello, I want to parse all the things!")
    assert m.messages == [("system", "\nYou are a multiline file parser. Always parse things.\n"),
                          ("user", "Hey there!"), ("assistant", "Hello, I want to parse all the things!")]


def test_ollama_draft_renderer_parser_requires_kept_verbatim():
    m = parse("FROM base\nDRAFT ./assistant\nRENDERER renderer1\nparser parser1\nRequires 0.14.0\n")
    assert m.extra == [("draft", "./assistant"), ("renderer", "renderer1"), ("parser", "parser1"),
                       ("requires", "0.14.0")]
    assert "DRAFT ./assistant\nRENDERER renderer1\nPARSER parser1\nREQUIRES 0.14.0\n" in m.to_text()


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"),
                                          ("utf-8", b"\xef\xbb\xbf"), ("utf-8", b"")])
def test_parse_file_encodings(tmp_path, encoding, bom):
    path = tmp_path / "Modelfile"
    path.write_bytes(bom + "FROM bob\nPARAMETER param1 1\nSYSTEM 你好👋 a utf16 file.\n".encode(encoding))
    assert parse_file(path) == Modelfile(from_="bob", parameters=[("param1", "1")], system="你好👋 a utf16 file.")


# -- the grammar ------------------------------------------------------------------------------------

def test_instructions_are_case_insensitive():
    m = parse('from llama3\nParameter temperature 0.5\ntEmPlAtE """{{ .Prompt }}"""\nsystem hi\n'
              "adapter ./a.gguf\nmessage user hello\nlicense MIT\n")
    assert m == Modelfile(from_="llama3", parameters=[("temperature", "0.5")], template="{{ .Prompt }}",
                          system="hi", adapters=["./a.gguf"], messages=[("user", "hello")], license=["MIT"])


def test_repeats_accumulate_in_order():
    m = parse("FROM a\nPARAMETER stop x\nLICENSE one\nPARAMETER temperature 1\nPARAMETER stop y\n"
              "LICENSE two\nADAPTER l1\nADAPTER l2\nSYSTEM first\nSYSTEM second\n")
    assert m.parameters == [("stop", "x"), ("temperature", "1"), ("stop", "y")]
    assert (m.license, m.adapters, m.system) == (["one", "two"], ["l1", "l2"], "second")
    assert Options.from_pairs(m.parameters).stop == ("x", "y")


def test_second_from_is_kept_in_extra():
    # `ollama show` writes a vision projector as a second FROM line (server/images.go Model.String).
    m = parse("FROM /blobs/model\nFROM /blobs/projector\n")
    assert (m.from_, m.extra) == ("/blobs/model", [("from", "/blobs/projector")])
    assert m.to_text() == "FROM /blobs/model\nFROM /blobs/projector\n"


def test_triple_quoted_template_keeps_go_template_verbatim():
    text = f'FROM x\nTEMPLATE """{LLAMA3_TEMPLATE}"""\nPARAMETER stop <|eot_id|>\n'
    m = parse(text)
    assert m.template == LLAMA3_TEMPLATE
    assert m.to_text() == f'FROM x\nTEMPLATE """{LLAMA3_TEMPLATE}"""\nPARAMETER stop <|eot_id|>\n'


def test_comments_only_start_lines():
    m = parse('  # a comment\nFROM llama3 # not a comment\nSYSTEM """\n# kept\n"""\n\t#another\n')
    assert (m.from_, m.system) == ("llama3 # not a comment", "\n# kept\n")


def test_no_escapes_in_quotes():
    # Ollama's unquote() only strips the quotes: \n stays two characters, "a"b" is a"b.
    assert parse('FROM x\nSYSTEM "a\\nb"').system == "a\\nb"
    assert parse('FROM x\nSYSTEM "a"b"').system == 'a"b'


def test_double_quotes_may_span_lines_and_close_only_at_a_line_end():
    assert parse('FROM x\nSYSTEM "one\ntwo"\nPARAMETER a 1').system == "one\ntwo"
    assert parse('FROM x\nSYSTEM """a""" b\nc"""\n').system == 'a""" b\nc'


def test_crlf_lines_and_values():
    m = parse('FROM x\r\nTEMPLATE """a\r\nb"""\r\nPARAMETER stop y\r\n')
    assert (m.template, m.parameters) == ("a\r\nb", [("stop", "y")])
    with pytest.raises(ModelfileError) as e:
        parse("FROM x\r\n\r\nBAD y\r\n")
    assert e.value.line == 3


def test_non_printable_characters_are_kept():
    # Ollama drops them (strconv.IsPrint); we keep them, so emoji with zero-width joiners survive.
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert parse(f"FROM x\nSYSTEM hi {family}\n").system == f"hi {family}"


def test_blank_value_after_a_space_is_empty_as_in_ollama():
    assert parse("FROM x\nSYSTEM \nPARAMETER stop  \n").system == ""
    assert parse("FROM x\nPARAMETER stop \n").parameters == [("stop", "")]


# -- errors name the line ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,line,needle", [
    ("FROM foo\nBADCOMMAND param1 value1\n", 2, 'unknown instruction "BADCOMMAND"; valid: FROM, PARAMETER'),
    ("FROM foo\n\n  {{ .Prompt }}\n", 3, 'unknown instruction "{{"'),
    ("FROM foo\nSYSTEM hi\nTEMPLATE \"\"\"{{ .Prompt }}\n\nPARAMETER a 1\n", 3, 'unterminated """'),
    ('FROM foo\nSYSTEM """This is a multiline system.""\n', 2, 'unterminated """'),
    ('FROM foo\nSYSTEM """done""" trailing\nPARAMETER a 1\n', 2, 'a closing """ must end its line'),
    ('FROM foo\n\nSYSTEM "\n', 3, 'unterminated "'),
    ("FROM foo\nMESSAGE badguy I'm a bad guy!\n", 2, 'MESSAGE role must be one of system, user, assistant'),
    ("FROM foo\nMESSAGE User hi\n", 2, 'not "User"'),  # Ollama compares roles exactly
    ("FROM foo\nMESSAGE system\n", 2, "MESSAGE system has no content"),
    ("FROM foo\nMESSAGE\n", 2, "MESSAGE needs a role and content"),
    ("FROM foo\nPARAMETER param1\n", 2, "PARAMETER param1 has no value"),
    ("FROM foo\n# c\nPARAMETER param1", 3, "PARAMETER param1 has no value"),
    ("FROM foo\nPARAMETER \n", 2, "PARAMETER needs a name and a value"),
    ("FROM foo\nPARAMETER top-k 40\n", 2, 'invalid parameter name "top-k"'),
    ("FROM foo\nSYSTEM\n", 2, "SYSTEM needs a value"),
    ("FROM \nSYSTEM x\n", 1, "FROM needs a model name or path"),
])
def test_errors_name_the_line(text, line, needle):
    with pytest.raises(ModelfileError) as e:
        parse(text)
    assert e.value.line == line
    assert str(e.value).startswith(f"Modelfile line {line}: ")
    assert needle in str(e.value)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "PARAMETER temperature 1\nSYSTEM hi\n"])
def test_missing_from(text):
    with pytest.raises(ModelfileError, match="no FROM line"):
        parse(text)


def test_parse_file_problems_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelfileError, match=r"^Modelfile: cannot read .*nope") as e:
        parse_file(tmp_path / "nope")
    assert e.value.line == 0
    with pytest.raises(ModelfileError, match="cannot read"):
        parse_file(tmp_path)
    big = tmp_path / "big"
    big.write_text("FROM x\n" + "# padding\n" * 20)
    monkeypatch.setattr(mf, "MAX_BYTES", 64)
    with pytest.raises(ModelfileError, match="larger than"):
        parse_file(big)
    bad = tmp_path / "latin1"
    bad.write_bytes("FROM x\nSYSTEM caf\xe9\n".encode("latin-1"))
    with pytest.raises(ModelfileError, match="not valid UTF-8") as e:
        parse_file(bad)
    assert e.value.line == 2
    assert isinstance(e.value, OficinaError) and "\n" not in str(e.value)


# -- serialization ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value,written", [
    ("plain text", "plain text"),
    ("say \"hi\" now", "say \"hi\" now"),  # a quote inside a bare value is fine
    ("", '""'),
    ("  padded ", '"  padded "'),
    ("\ttab", '"\ttab"'),  # Ollama's quote() writes this bare and loses the tab
    ('"quoted"', '"""' + '"quoted"' + '"""'),  # Ollama's quote() writes this bare: it reads back as quoted
    ("two\nlines", '"""two\nlines"""'),
    ('"', '"' * 7),
])
def test_quoting(value, written):
    m = Modelfile(from_="x", system=value)
    assert m.to_text() == f"FROM x\nSYSTEM {written}\n"
    assert parse(m.to_text()) == m


def test_to_text_rejects_what_cannot_be_read_back():
    with pytest.raises(ModelfileError, match='"""'):
        Modelfile(from_="x", template='a """\nb').to_text()
    with pytest.raises(ModelfileError, match="no FROM"):
        Modelfile().to_text()
    with pytest.raises(ModelfileError, match="parameter name"):
        Modelfile(from_="x", parameters=[("top k", "1")]).to_text()
    with pytest.raises(ModelfileError, match="role"):
        Modelfile(from_="x", messages=[("tool", "hi")]).to_text()
    with pytest.raises(ModelfileError, match="extra"):
        Modelfile(from_="x", extra=[("quantize", "q4_0")]).to_text()


HAND_MADE = [
    Modelfile(from_="llama3.2"),
    Modelfile(from_="./model dir/m.gguf", parameters=[("temperature", "0.7"), ("stop", "<|eot_id|>"),
                                                      ("stop", "User:")],
              template=LLAMA3_TEMPLATE, system='You are "Mario".\nBe brief.', adapters=["a.gguf", "b"],
              messages=[("user", "hi"), ("assistant", "  hello  "), ("system", "")],
              license=["MIT", 'Line one\n"Quoted"\n'], extra=[("requires", "0.14.0"), ("from", "proj.gguf")]),
    Modelfile(from_='"odd"', template="", system="#not a comment", parameters=[("stop", '"')]),
]


@pytest.mark.parametrize("m", HAND_MADE)
def test_round_trip_hand_made(m):
    text = m.to_text()
    assert parse(text) == m
    assert parse(text).to_text() == text


# Text that exercises the grammar's edges, mixed with arbitrary Unicode.
_PIECES = st.sampled_from(['"', '"""', " ", "\t", "\n", "\r\n", "\r", "#", "{{ .Prompt }}", "a", "FROM x",
                           "\u200d", "\xa0", "\x00", "\u2028", "é"])
TEXT = st.one_of(st.text(max_size=20), st.lists(_PIECES, max_size=10).map("".join))
NONEMPTY = TEXT.filter(bool)
MODELFILES = st.builds(
    Modelfile,
    from_=NONEMPTY,
    parameters=st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_]+", fullmatch=True), TEXT), max_size=4),
    template=st.none() | TEXT,
    system=st.none() | TEXT,
    adapters=st.lists(TEXT, max_size=2),
    messages=st.lists(st.tuples(st.sampled_from(ROLES), TEXT), max_size=4),
    license=st.lists(TEXT, max_size=2),
    extra=st.lists(st.tuples(st.sampled_from(EXTRA), NONEMPTY), max_size=3),
)


def _values(m: Modelfile) -> list[str]:
    return ([m.from_, m.template or "", m.system or ""] + m.adapters + m.license
            + [v for _, v in m.parameters + m.messages + m.extra])


@settings(max_examples=400, deadline=None)
@given(MODELFILES)
def test_round_trip_generated(m):
    try:
        text = m.to_text()
    except ModelfileError:
        # Only text with """ then blanks then a line break has no spelling (no escapes exist).
        assert any(re.search(r'"""[^\S\r\n]*[\r\n]', v) for v in _values(m))
        return
    assert parse(text) == m
    assert parse(text).to_text() == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["FROM m", "from x y", "PARAMETER stop", "MESSAGE user", "SYSTEM", "TEMPLATE",
                                 "# c", "", " ", '"', '"""', "\n", "\r\n", "a", "\t"]), max_size=12).map("".join))
def test_parse_never_crashes_and_what_it_reads_round_trips(text):
    try:
        m = parse(text)
    except ModelfileError as e:
        assert e.line >= 0 and "\n" not in str(e)
        return
    assert parse(m.to_text()) == m
