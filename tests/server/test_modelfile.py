"""Modelfile parsing, the create request it maps to, and the Modelfile /api/show writes
(server/modelfile.py; spec/ollama-api.md §15, checklist MF1-MF4, M7)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from server.modelfile import (
    Command,
    ModelfileError,
    create_request,
    format_parameter,
    go_format_float,
    parse,
    quote,
    render_modelfile,
    show_parameters,
)

COMMAND_ERROR = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)


def test_instruction_names_are_case_insensitive() -> None:  # MF1
    cmds = parse("from llama3.2\nSyStEm hello\nParameter temperature 0.5\n")
    assert cmds == [
        Command("model", "llama3.2"),
        Command("system", "hello"),
        Command("temperature", "0.5"),
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [("FROM x\nFOO bar\n", 2), ("FROM\nx\n", 1), ("FROM x\n\n\nSYSTEM: y\n", 4)],
)
def test_unknown_instruction_is_rejected_with_its_line(text: str, line: int) -> None:  # MF1
    with pytest.raises(ModelfileError) as e:
        parse(text)
    assert str(e.value) == f"(line {line}): {COMMAND_ERROR}"


def test_from_is_required() -> None:  # MF1
    with pytest.raises(ModelfileError, match="^no FROM line$"):
        parse("SYSTEM hi\n# FROM x\n")


def test_triple_quotes_span_lines_verbatim() -> None:  # MF2
    text = 'FROM x\nTEMPLATE """{{ if .System }}<s>\n  {{ .System }}\n"quoted"\n{{ end }}"""\n'
    assert parse(text)[1] == Command(
        "template", '{{ if .System }}<s>\n  {{ .System }}\n"quoted"\n{{ end }}'
    )


def test_plain_quotes_also_span_lines() -> None:
    assert parse('FROM x\nSYSTEM "a\nb"\n')[1] == Command("system", "a\nb")


@pytest.mark.parametrize("text", ['FROM x\nSYSTEM """abc\n', 'FROM x\nSYSTEM "abc', 'FROM """x'])
def test_unterminated_quotes_fail(text: str) -> None:  # MF2
    with pytest.raises(ModelfileError, match="^unexpected EOF$"):
        parse(text)


def test_value_continues_until_it_ends_with_its_closing_quotes() -> None:
    # `"""a""" b` is not complete at the line end, so reading goes on to the next `"""`.
    assert parse('FROM x\nSYSTEM """a""" b\nc"""\n')[1] == Command("system", 'a""" b\nc')


def test_message_roles_are_checked() -> None:  # MF3
    assert parse("FROM x\nMESSAGE user hi there\n")[1] == Command("message", "user: hi there")
    with pytest.raises(ModelfileError) as e:
        parse("FROM x\nMESSAGE tool x\n")
    assert str(e.value) == (
        '(line 2): message role must be one of "system", "user", or "assistant"'
    )


def test_comments_blank_lines_crlf_and_control_characters() -> None:
    text = "# a comment\r\n\r\nFROM x # not a comment\r\n  SYSTEM a\x01b\tc\r\nSYSTEM \n"
    assert parse(text) == [
        Command("model", "x # not a comment"),
        Command("system", "ab\tc"),
        Command("system", ""),
    ]


def test_bad_parameter_key_is_an_eof_error() -> None:
    with pytest.raises(ModelfileError, match="^unexpected EOF: top$"):
        parse("FROM x\nPARAMETER top-k 1\n")


def test_utf16_with_bom_is_decoded() -> None:
    assert parse("FROM x\nSYSTEM é\n".encode("utf-16"))[1] == Command("system", "é")


def test_stop_accumulates_and_unknown_parameters_fail(tmp_path: Path) -> None:  # MF4
    cmds = parse("FROM x\nPARAMETER stop a\nPARAMETER temperature 1\nPARAMETER stop <b>\n")
    assert create_request(cmds, tmp_path).request["parameters"] == {
        "stop": ["a", "<b>"],
        "temperature": 1.0,
    }
    with pytest.raises(ModelfileError, match="^unknown parameter 'foo'$"):
        create_request(parse("FROM x\nPARAMETER foo 1\n"), tmp_path)


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("num_ctx", "4096", 4096),
        ("seed", "-1", -1),
        ("temperature", "0.1", 0.1),  # parsed as float32, sent with float32's shortest digits
        ("top_p", "0.95", 0.95),
        ("repeat_penalty", "1e2", 100.0),
        ("use_mmap", "T", True),
        ("use_mmap", "FALSE", False),
        ("stop", "<|im_end|>", ["<|im_end|>"]),
    ],
)
def test_parameter_typing(key: str, raw: str, value: object) -> None:
    result = format_parameter(key, raw)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("num_ctx", "4096.5", "invalid int value [4096.5]"),
        ("temperature", "hot", "invalid float value [hot]"),
        ("use_mmap", "yes", "invalid bool value [yes]"),
    ],
)
def test_parameter_typing_errors(key: str, raw: str, message: str) -> None:
    with pytest.raises(ModelfileError) as e:
        format_parameter(key, raw)
    assert str(e.value) == message


def test_deprecated_parameters_are_skipped(tmp_path: Path) -> None:
    plan = create_request(parse("FROM x\nPARAMETER mirostat 2\n"), tmp_path)
    assert "parameters" not in plan.request


def test_create_request_maps_every_instruction(tmp_path: Path) -> None:
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF fake weights")
    digest = "sha256:" + hashlib.sha256(b"GGUF fake weights").hexdigest()
    text = (
        "FROM ./w.gguf\nTEMPLATE {{ .Prompt }}\nSYSTEM be brief\nLICENSE MIT\nLICENSE BSD\n"
        "MESSAGE user hi\nMESSAGE assistant hello: there\nPARAMETER num_ctx 128\n"
        "REQUIRES v0.14.0\n"
    )
    plan = create_request(parse(text), tmp_path)
    assert plan.request == {
        "files": {"w.gguf": digest},
        "template": "{{ .Prompt }}",
        "system": "be brief",
        "license": ["MIT", "BSD"],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello: there"},
        ],
        "parameters": {"num_ctx": 128},
        "requires": "0.14.0",
    }
    assert plan.uploads == {digest: weights}


def test_from_a_missing_path_is_a_model_name(tmp_path: Path) -> None:
    assert create_request(parse("FROM llama3.2\n"), tmp_path).request == {"from": "llama3.2"}


def test_from_resolves_relative_to_the_modelfile_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"x")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir("/")
    for ref in ("m.gguf", "./m.gguf", "~/m.gguf", str(tmp_path / "m.gguf")):
        assert create_request(parse(f"FROM {ref}\n"), tmp_path).request["files"] == {
            "m.gguf": "sha256:" + hashlib.sha256(b"x").hexdigest()
        }


def test_adapter_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError, match="no such file"):
        create_request(parse("FROM x\nADAPTER ./lora.gguf\n"), tmp_path)


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (0.7, "0.7"),
        (4096.0, "4096"),
        (123456.0, "123456"),
        (1048576.0, "1.048576e+06"),
        (1e6, "1e+06"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (-2.5e-7, "-2.5e-07"),
    ],
)
def test_go_format_float(x: float, text: str) -> None:
    assert go_format_float(x) == text


def test_show_parameters_lines() -> None:  # M7
    text = show_parameters({"stop": ["<|im_end|>", 'a"b'], "temperature": 0.7, "num_ctx": 4096})
    assert text.split("\n") == [
        'stop                           "<|im_end|>"',
        'stop                           "a\\"b"',
        "temperature                    0.7",
        "num_ctx                        4096",
    ]


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "plain"),
        ("two\nlines", '"two\nlines"'),
        (' edge"', '""" edge""""'),
        ("inner space", "inner space"),
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_render_modelfile_layout() -> None:  # M11
    text = render_modelfile(
        "tiny:latest",
        Path("/m/blobs/sha256-abc"),
        None,
        "Be brief.",
        {"stop": ["<|im_end|>"], "temperature": 0.7},
        ("MIT",),
        ({"role": "user", "content": "hi\nthere"},),
    )
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM tiny:latest\n"
        "\n"
        "FROM /m/blobs/sha256-abc\n"
        "TEMPLATE {{ .Prompt }}\n"
        "SYSTEM Be brief.\n"
        "PARAMETER stop <|im_end|>\n"
        "PARAMETER temperature 0.7\n"
        "LICENSE MIT\n"
        'MESSAGE user "hi\nthere"\n'
    )


def test_rendered_modelfile_parses_back(tmp_path: Path) -> None:
    template = '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"'
    blob = tmp_path / "sha256-blob"  # FROM names the blob file; it exists, as on the server
    blob.write_bytes(b"GGUF")
    text = render_modelfile(
        "tiny:latest",
        blob,
        template,
        " spaced ",
        {"stop": ["a", "b"], "num_ctx": 2048},
        ("L1",),
        ({"role": "assistant", "content": "ok"},),
    )
    plan = create_request(parse(text), tmp_path)
    assert plan.request == {
        "files": {"sha256-blob": f"sha256:{hashlib.sha256(b'GGUF').hexdigest()}"},
        "template": template,
        "system": " spaced ",
        "parameters": {"stop": ["a", "b"], "num_ctx": 2048},
        "license": ["L1"],
        "messages": [{"role": "assistant", "content": "ok"}],
    }
