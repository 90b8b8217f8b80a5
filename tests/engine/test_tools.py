"""Tests for engine/chat/tools.py and engine/chat/thinking.py (spec ollama-api.md §7, §8; checklist
K*).

Expected splits are worked out by hand from the spec's parser rules.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chat import gotemplate as go
from engine.chat.thinking import ThinkingParser, infer_thinking_tags, split_thinking
from engine.chat.tools import ChatOutputParser, ToolCall, ToolCallParser, new_call_id, tool_call_tag


def feed(parser: ToolCallParser, pieces: list[str]) -> tuple[list[ToolCall], str]:
    calls, content = [], []
    for p in pieces:
        c, text = parser.add(p)
        calls += c
        content.append(text)
    content.append(parser.content())
    return calls, "".join(content)


def chars(text: str) -> list[str]:
    return list(text)


# ---------------------------------------------------------------- the tag (§7.4)


@pytest.mark.parametrize(
    ("src", "tag"),
    [
        ("", "{"),
        ("{{ if .ToolCalls }}{{ end }}", "{"),
        ("{{ if .ToolCalls }}<tool_call>{{ range .ToolCalls }}{}{{ end }}{{ end }}", "<tool_call>"),
        (
            "{{ if .ToolCalls }}[TOOL_CALLS] [{{ range .ToolCalls }}{{ . }}{{ end }}{{ end }}",
            "[TOOL_CALLS] [",
        ),
        ("{{ if .ToolCalls }}\n [ {{ range .ToolCalls }}{{ . }}{{ end }}]{{ end }}", "["),
        ('{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": 1}{{ end }}{{ end }}', "{"),
        ("{{ if .ToolCalls }}{{ range .ToolCalls }}{{ .Function.Name }}<x>{{ end }}{{ end }}", "{"),
        ("{{ if .ToolCalls }}{{ range .ToolCalls }}{{ . }}{{ end }}]{{ end }}", "{"),
        ("{{ if .ToolCalls }}A{{ if .B }}inner{{ end }}B{{ end }}", "A"),
        ("{{ range .Messages }}{{ if .ToolCalls }}\r\n<c>\r\n{{ end }}{{ end }}", "<c>"),
        ("{{ if .X }}{{ else }}{{ if .ToolCalls }}T{{ end }}{{ end }}", "T"),
        ("{{ if $.ToolCalls }}T{{ end }}", "{"),  # a variable, not a field
    ],
)
def test_tool_call_tag(src: str, tag: str) -> None:  # K1
    assert tool_call_tag(go.parse(src)) == tag


# ---------------------------------------------------------------- the parser (§7.5)


def test_text_tag_with_leading_content() -> None:  # K2
    p = ToolCallParser("<tool_call>", ["f"])
    text = 'Hi <tool_call>{"name":"f","arguments":{"a":1}}</tool_call>'
    calls, content = p.add(text)
    assert content == "Hi "
    assert calls == [ToolCall("f", {"a": 1}, 0)]


@pytest.mark.parametrize("split", [False, True])
def test_text_tag_streamed(split: bool) -> None:
    text = 'ok <tool_call>{"name":"f","arguments":{"a":"}"}}</tool_call>'
    text += '<tool_call>{"name":"g","parameters":"{\\"b\\":2}"}</tool_call>'
    pieces = chars(text) if split else [text]
    calls, content = feed(ToolCallParser("<tool_call>", ["f", "g"]), pieces)
    assert content == "ok "
    assert [(c.name, c.arguments, c.index) for c in calls] == [
        ("f", {"a": "}"}, 0),
        ("g", {"b": 2}, 1),
    ]


def test_partial_tag_is_held() -> None:
    p = ToolCallParser("<tool_call>", ["f"])
    assert p.add("Hello <tool") == ([], "Hello ")
    assert p.add("box") == ([], "<toolbox")


@pytest.mark.parametrize("split", [False, True])
def test_bare_json_call_under_a_text_tag(split: bool) -> None:
    text = ' \n{"name": "f", "arguments": {"city": "Paris"}}'
    pieces = chars(text) if split else [text]
    parser = ToolCallParser("<tool_call>", ["f"], bare_json=True)
    calls, content = feed(parser, pieces)
    assert calls == [ToolCall("f", {"city": "Paris"}, 0)]
    assert content == " \n"  # blanks are held until the first other character decides
    assert parser.content() == ""


def test_bare_json_off_keeps_ollamas_text_tag_rule() -> None:
    text = '{"name": "f", "arguments": {}}'
    assert feed(ToolCallParser("<tool_call>", ["f"]), [text]) == ([], text)
    p = ToolCallParser("<tool_call>", ["f"], bare_json=True)
    assert p.add("Hi ") == ([], "Hi ")  # text first: only the tag starts calls now
    assert p.add('{"name": "f", "arguments": {}}') == ([], '{"name": "f", "arguments": {}}')
    assert p.add('<tool_call>{"name": "f", "arguments": {}}') == ([ToolCall("f", {}, 0)], "")


def test_json_tag_disabled_by_leading_text() -> None:  # K3
    p = ToolCallParser("{", ["f"])
    assert p.add("Sure: ") == ([], "Sure: ")
    assert p.state == "done"
    assert p.add('{"name":"f","arguments":{}}') == ([], '{"name":"f","arguments":{}}')


def test_json_tag_call_after_whitespace() -> None:
    calls, content = feed(
        ToolCallParser("{", ["f"]), chars('  \n{"name": "f", "arguments": {"x": [1, 2]}}')
    )
    assert content == "  \n"
    assert calls == [ToolCall("f", {"x": [1, 2]}, 0)]


def test_json_undeclared_tool_becomes_content() -> None:  # K4
    p = ToolCallParser("{", ["f"])
    out = [p.add(c) for c in '{"name":"search","arguments":{"q":"x"}} after']
    text = "".join(c for _, c in out)
    assert all(not calls for calls, _ in out)
    assert text == '{"name":"search","arguments":{"q":"x"}} after'
    # the content is released when the braces close, not before
    closing = len('{"name":"search","arguments":{"q":"x"}}') - 1
    assert out[closing][1] == '{"name":"search","arguments":{"q":"x"}}'
    assert all(c == "" for _, c in out[:closing])


def test_name_without_arguments_is_no_call() -> None:  # K6
    calls, content = feed(ToolCallParser("{", ["f"]), ['{"name":"f"}'])
    assert calls == []
    assert content == '{"name":"f"}'


def test_first_non_call_object_disables_later_calls() -> None:
    text = '{"a":1} {"name":"f","arguments":{}}'
    calls, content = feed(ToolCallParser("{", ["f"]), chars(text))
    assert calls == []
    assert content == '{"a":1} {"name":"f","arguments":{}}'


def test_list_tag_several_calls() -> None:
    text = '[{"name":"f","arguments":{"a":1}},{"name":"g","arguments":{"b":2}}]'
    calls, content = feed(ToolCallParser("[", ["f", "g"]), chars(text))
    assert [(c.name, c.index) for c in calls] == [("f", 0), ("g", 1)]
    assert content == ""


def test_tool_name_prefix_waits_and_longest_wins() -> None:
    p = ToolCallParser("<c>", ["get", "get_weather"])
    assert p.add("<c>get") == ([], "")  # `get` may still become `get_weather`
    calls, _ = p.add('_weather {"city":"Oslo"}')
    assert calls == [ToolCall("get_weather", {"city": "Oslo"}, 0)]


def test_arguments_under_tool_name_key_and_nested() -> None:
    calls, _ = feed(ToolCallParser("<c>", ["f"]), ['<c>f {"f": {"x": 1}}'])
    assert calls[0].arguments == {"x": 1}
    calls, _ = feed(
        ToolCallParser("<c>", ["f"]),
        ['<c>f {"call": [{"name": "f", "arguments": "{\\"y\\": true}"}]}'],
    )
    assert calls[0].arguments == {"y": True}
    calls, _ = feed(ToolCallParser("<c>", ["f"]), ['<c>f {"z": 2.5}'])
    assert calls[0].arguments == {"z": 2.5}  # no known key: the whole object


def test_numbers_decode_as_go_does() -> None:
    calls, _ = feed(
        ToolCallParser("{", ["f"]), ['{"name":"f","arguments":{"a":1.0,"b":1e2,"c":0.5}}']
    )
    assert calls[0].arguments == {"a": 1, "b": 100, "c": 0.5}
    assert type(calls[0].arguments["a"]) is int
    _, content = feed(ToolCallParser("{", ["f"]), ['{"name":"f","arguments":{"a":NaN}}'])
    assert content == '{"name":"f","arguments":{"a":NaN}}'


def test_text_tag_leftovers_discarded_at_end() -> None:
    p = ToolCallParser("<c>", ["f"])
    p.add("<c>f {")
    assert p.content() == ""


def test_call_ids_and_wire_shape() -> None:  # K5
    rng = random.Random(0)
    ids = {new_call_id(rng) for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids)
    c = ToolCall("f", {"a": 1}, 2, "call_abcdefgh")
    assert c.to_json() == {
        "id": "call_abcdefgh",
        "function": {"index": 2, "name": "f", "arguments": {"a": 1}},
    }


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]"\\:, abfgn<>c_01', max_size=60), st.integers(1, 5))
def test_parser_never_raises_and_json_tag_keeps_text(text: str, step: int) -> None:
    """Random output never crashes the parser; with no call found nothing is lost for `{`."""
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    calls, content = feed(ToolCallParser("{", ["f", "g"]), pieces)
    if not calls:
        assert content == text
    for i, c in enumerate(calls):
        assert c.index == i and isinstance(c.arguments, dict)
    feed(ToolCallParser("<c>", ["f"]), pieces)


# ---------------------------------------------------------------- thinking (§8)


def test_infer_thinking_tags() -> None:  # K7
    src = "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}"
    assert infer_thinking_tags(go.parse(src)) == ("<think>", "</think>")
    src = "{{ range .Tools }}{{ if .Thinking }}<t>{{ .Thinking }}</t>{{ end }}{{ end }}"
    assert infer_thinking_tags(go.parse(src)) == ("", "")
    src = "{{ range .Messages }}{{ if .Thinking }}<t>{{ .Thinking }}{{ end }}{{ end }}"
    assert infer_thinking_tags(go.parse(src)) == ("<t>", "")


def test_thinking_split_whole() -> None:
    assert split_thinking("  <think> hmm </think>\n\nHello", "<think>", "</think>") == (
        "hmm ",
        "Hello",
    )


def test_output_without_opening_tag_is_all_content() -> None:  # K11
    p = ThinkingParser("<think>", "</think>")
    assert p.add("  ") == ("", "")
    assert p.add(" Hi <think>x</think>") == ("", "   Hi <think>x</think>")


def test_thinking_streamed_char_by_char() -> None:
    p = ThinkingParser("<think>", "</think>")
    out = [p.add(c) for c in "<think>\nab</thinx</think>  c d"]
    thinking = "".join(t for t, _ in out)
    content = "".join(c for _, c in out)
    assert (thinking, content) == ("ab</thinx", "c d")
    # the possible start of a closing tag is held back until disambiguated
    assert out[len("<think>\nab</thin") - 1] == ("", "")


def test_prefilled_opening_tag() -> None:
    p = ThinkingParser("<think>", "</think>", prefilled=True)
    assert p.add("\n reasoning</think>answer") == ("reasoning", "answer")


def test_chat_output_parser_thinking_then_call() -> None:
    parser = ChatOutputParser(
        thinking=ThinkingParser("<think>", "</think>"),
        tools=ToolCallParser("<tool_call>", ["f"]),
        rng=random.Random(1),
    )
    pieces = [
        "<think>",
        "plan",
        "</think>",
        "<tool_call>",
        '{"name":"f",',
        '"arguments":{}}',
        "</tool_call>",
    ]
    deltas = [parser.add(p, done=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    assert "".join(d.thinking for d in deltas) == "plan"
    calls = [c for d in deltas for c in d.tool_calls]
    assert [(c.name, c.arguments, c.index) for c in calls] == [("f", {}, 0)]
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0].id)
    assert all(d.content == "" for d in deltas)
    assert deltas[3].held


def test_chat_output_parser_drops_calls_with_content_in_same_piece() -> None:
    parser = ChatOutputParser(tools=ToolCallParser("<c>", ["f"]))
    d = parser.add('Hi <c>{"name":"f","arguments":{}}')
    assert (d.content, d.tool_calls) == ("Hi ", [])


def test_chat_output_parser_json_leftover_at_done() -> None:
    parser = ChatOutputParser(tools=ToolCallParser("{", ["f"]))
    assert parser.add('{"na').held
    d = parser.add("", done=True)
    assert d.content == '{"na'
