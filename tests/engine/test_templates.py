"""Tests for engine/chat/gotemplate.py, goexec.py, govalues.py and templates.py (spec §6, checklist
T*).

Expected prompts are worked out by hand from the spec's rules; the well-known templates below are
Ollama's ChatML, Llama 3, Mistral and Gemma 3 templates, retyped.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chat import gotemplate as go
from engine.chat.goexec import BUILTINS, execute
from engine.chat.templates import (
    DEFAULT_TEMPLATE,
    GoTemplate,
    JinjaTemplate,
    Message,
    chat_messages,
    collate,
    drop_old_thinking,
    load_template,
    render_chat,
    render_generate,
    think_values,
)
from engine.chat.tools import ToolCall
from engine.errors import TemplateError
from engine.gguf.reader import GGUFFile
from tests.conftest import needs_oracle


def run(src: str, data: object = None) -> str:
    return execute(src, go.parse(src), data)


SYS, U1, A1, U2 = (
    Message("system", "Be brief"),
    Message("user", "Hi"),
    Message("assistant", "Hello"),
    Message("user", "Why?"),
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "City name"}},
        },
    },
}

# ---------------------------------------------------------------- worked examples (§6.8)

T1 = """{{- if .System }}[SYS]{{ .System }}[/SYS]
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}[U]{{ .Content }}[/U]
{{ else if eq .Role "assistant" }}[A]{{ .Content }}[/A]
{{ end }}
{{- end }}[A]"""

T2 = "{{ if .System }}<<{{ .System }}>> {{ end }}Q: {{ .Prompt }} A:{{ .Response }}\n"

T3 = "{{ if .Suffix }}<P>{{ .Prompt }}<S>{{ .Suffix }}<M>{{ else }}{{ .Prompt }}{{ end }}"

T4 = """{{- if .Tools }}TOOLS {{ .Tools }}
{{ end }}
{{- range .Messages }}
{{- if .ToolCalls }}CALL {{ range .ToolCalls }}{"name":"{{ .Function.Name }}",\
"arguments":{{ .Function.Arguments }}}{{ end }}
{{ else }}{{ .Role }}: {{ .Content }}
{{ end }}
{{- end }}assistant:"""


def test_example_a_messages_mode() -> None:  # T7
    got = GoTemplate(T1).render([SYS, U1, A1, U2])
    assert got == "[SYS]Be brief[/SYS]\n[U]Hi[/U]\n[A]Hello[/A]\n[U]Why?[/U]\n[A]"


def test_example_b_legacy_mode() -> None:  # T5, T6
    got = GoTemplate(T2).render([SYS, U1, A1, U2])
    assert got == "<<Be brief>> Q: Hi A:Hello\nQ: Why? A:"


def test_example_c_fill_in_the_middle() -> None:
    t = GoTemplate(T3)
    assert t.render([], prompt="def f(", suffix="return x") == "<P>def f(<S>return x<M>"
    assert render_generate(t, "def f(").prompt == "def f("
    assert "insert" in t.capabilities


def test_example_d_tools() -> None:  # T12
    t = GoTemplate(T4)
    assert t.capabilities == ("tools",)
    assert t.tool_tag == "CALL"
    got = t.render([Message("user", "Weather in Oslo?")], tools=[WEATHER])
    assert got == (
        'TOOLS [{"type":"function","function":{"name":"get_weather","description":"Get weather",'
        '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string",'
        '"description":"City name"}}}}}]\nuser: Weather in Oslo?\nassistant:'
    )


def test_tool_calls_in_history_render_sorted_json() -> None:  # T11
    call = ToolCall("get_weather", {"unit": "c", "city": "Oslo", "n": 2})
    msgs = [Message("assistant", "", tool_calls=(call,)), Message("tool", "4C")]
    got = GoTemplate(T4).render(msgs)
    assert got == (
        'CALL {"name":"get_weather","arguments":{"city":"Oslo","n":2,"unit":"c"}}\n'
        "tool: 4C\nassistant:"
    )
    src = "{{ range .Messages }}{{ range .ToolCalls }}{{ json .Function.Arguments }}{{ end }}"
    src += "{{ end }}"
    assert GoTemplate(src).render(msgs) == '{"city":"Oslo","n":2,"unit":"c"}'


# ---------------------------------------------------------------- parsing rules


def test_default_template_passes_prompt_through() -> None:  # T1
    t = load_template(None, None)
    assert t.source == DEFAULT_TEMPLATE
    assert render_chat(t, [Message("user", "hello <b> there")]).prompt == "hello <b> there"
    assert t.capabilities == ()


def test_response_appended_only_without_messages_or_response() -> None:  # T2
    assert GoTemplate("P:{{ .Prompt }}").render([U1, A1]) == "P:HiHello"
    assert GoTemplate("P:{{ .Prompt }}|{{ .Response }}!").render([U1]) == "P:Hi|"
    assert "response" not in GoTemplate("{{ range .Messages }}{{ end }}").identifiers


def test_trim_markers_remove_all_adjacent_whitespace() -> None:  # T8
    assert run("a \n\t {{- 1 -}} \r\n b") == "a1b"
    assert run("a {{- /* c */ -}} b") == "ab"
    assert run("a {{/* c */}} b") == "a  b"
    assert run("{{-3}}") == "-3"  # a dash without a following space is a number


def test_variables_assigned_inside_range_escape_it() -> None:  # T9
    src = '{{ $s := "" }}{{ range .L }}{{ $s = . }}{{ end }}{{ $s }}'
    assert run(src, {"L": ["a", "b"]}) == "b"
    assert run("{{ range $i, $m := .L }}{{ $i }}={{ $m }};{{ end }}", {"L": ["x", "y"]}) == (
        "0=x;1=y;"
    )


def test_eq_any_and_or_return_arguments() -> None:  # T10
    assert run('{{ eq .R "a" "b" }}', {"R": "b"}) == "true"
    assert run('{{ eq .R "a" "b" }}', {"R": "c"}) == "false"
    assert run('{{ and 1 "" 2 }}|{{ and 1 2 }}|{{ or 0 "" }}|{{ or 0 "x" 1 }}') == "|2||x"
    assert run("{{ or .Missing .A }}", {"A": 3}) == "3"  # short-circuit, missing key is nil


def test_go_builtins() -> None:
    data = {"L": [1, 2, 3], "M": {"b": 1, "a": 2}, "S": "héllo"}
    assert run("{{ len .L }} {{ len .S }} {{ index .L 1 }} {{ slice .L 1 }}", data) == (
        "3 6 2 [2 3]"
    )
    assert run("{{ range $k, $v := .M }}{{ $k }}{{ $v }}{{ end }} {{ .M }}", data) == (
        "a2b1 map[a:2 b:1]"
    )
    assert run('{{ printf "%s-%d-%q-%v" "a" 7 "q" 1.5 }}') == 'a-7-"q"-1.5'
    assert run('{{ print 1 2 "x" 3 }}|{{ println "a" 1 }}') == "1 2x3|a 1\n"
    assert run("{{ 1000000.0 }} {{ 0.00001 }} {{ 123456.5 }}") == "1e+06 1e-05 123456.5"
    assert run('{{ json "<a&b>" }}') == '"\\u003ca\\u0026b\\u003e"'
    assert run('{{ .L | len }} {{ (len .L) | printf "%d!" }}', data) == "3 3!"
    assert run('{{ lt 1 2 }} {{ ge 2 2 }} {{ ne "a" "b" }} {{ not 0 }}') == "true true true true"
    assert run("{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}", data) == "1"
    assert run("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}", data) == (
        "13"
    )
    assert run("{{ range .E }}x{{ else }}empty{{ end }}", {"E": []}) == "empty"
    assert run("{{ with .A }}{{ . }}{{ else }}none{{ end }}", {"A": ""}) == "none"
    assert run("{{ with $x := .A }}{{ $x }}{{ end }}", {"A": "v"}) == "v"
    assert run("{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}", {"B": 1}) == "b"
    assert run("{{ `raw\\n` }}{{ \"\\t\" }}{{ 'a' }}") == "raw\\n\t97"


def test_parser_knows_exactly_the_executor_functions() -> None:
    assert go.FUNCTION_NAMES == set(BUILTINS) | {"and", "or"}


def test_missing_keys_are_nil() -> None:
    assert run("{{ .Nope }}|{{ if .Nope }}y{{ else }}n{{ end }}", {}) == "<no value>|n"


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("{{ .A", "template: :1: unclosed action"),
        ("a\n{{ foo }}", 'template: :2: function "foo" not defined'),
        ("{{ end }}", "template: :1: unexpected {{end}}"),
        ("{{ if 1 }}", "template: :1: unexpected EOF"),
        ("{{ $x }}", 'template: :1: undefined variable "$x"'),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        ("{{/* x", "template: :1: unclosed comment"),
        ('{{ template "x" }}', "template: :1: {{template}} is not supported"),
    ],
)
def test_parse_errors(src: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        go.parse(src)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ('{{ eq 1 "a" }}', "incompatible types for comparison"),
        ("{{ index .L 5 }}", "index out of range: 5"),
        ("{{ .L.X }}", "can't evaluate field X in type []interface {}"),
        ("{{ .A.B }}", "nil pointer evaluating interface {}.B"),
        ("{{ lt true false }}", "invalid type for comparison"),
    ],
)
def test_execution_errors(src: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        run(src, {"L": [1]})
    assert str(e.value).startswith('template: :1:3: executing "" at <')
    assert str(e.value).endswith(message)


def test_struct_fields_are_checked() -> None:
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type"):
        GoTemplate("{{ range .Messages }}{{ .Nope }}{{ end }}").render([U1])


# ---------------------------------------------------------------- messages and collation


def test_system_joined_and_kept_in_messages() -> None:  # T3
    src = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    msgs = [SYS, U1, Message("system", "Again")]
    assert GoTemplate(src).render(msgs) == "Be brief\n\nAgain|system:Be brief;user:Hi;system:Again;"


def test_collation_merges_runs_except_tool() -> None:  # T4
    msgs = [U1, Message("user", "there"), Message("tool", "a"), Message("tool", "b"), A1]
    system, merged = collate(msgs)
    assert system == ""
    assert [(m.role, m.content) for m in merged] == [
        ("user", "Hi\n\nthere"),
        ("tool", "a"),
        ("tool", "b"),
        ("assistant", "Hello"),
    ]


def test_chat_messages_model_system_and_history() -> None:
    hist = [Message("user", "old")]
    got = chat_messages([U1], model_system="S", model_messages=hist)
    assert [m.role for m in got] == ["system", "user", "user"]
    assert chat_messages([SYS, U1], model_system="S") == [SYS, U1]


def test_think_values() -> None:  # K9
    assert think_values("medium") == {"Think": True, "ThinkLevel": "medium", "IsThinkSet": True}
    assert think_values(True) == {"Think": True, "ThinkLevel": "medium", "IsThinkSet": True}
    assert think_values(False) == {"Think": False, "ThinkLevel": "", "IsThinkSet": True}
    assert think_values(None) == {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    src = "{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}"
    assert GoTemplate(src).render([U1], think="high") == "true high true"


def test_legacy_cut_inside_block_and_prefill() -> None:
    t = GoTemplate(
        "{{ if .Prompt }}U:{{ .Prompt }}{{ end }}{{ if 1 }}A:{{ .Response }}END{{ end }}X"
    )
    assert t.render([U1, A1, U2]) == "U:HiA:HelloENDXU:Why?A:"
    assert t.render([U1, A1]) == "U:HiA:Hello"  # the last assistant text acts as a prefill


# ---------------------------------------------------------------- truncation and images


def _count_chars(text: str) -> int:
    return len(text)


def test_truncation_drops_oldest_keeps_system_and_last() -> None:  # T13, T14, T15
    t = GoTemplate("{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}")
    msgs = [SYS, Message("user", "aaaa"), Message("assistant", "bbbb"), Message("user", "cc")]
    full = "<system:Be brief><user:aaaa><assistant:bbbb><user:cc>"
    assert render_chat(t, msgs, num_ctx=len(full), count_tokens=_count_chars).prompt == full
    out = render_chat(t, msgs, num_ctx=len(full) - 1, count_tokens=_count_chars)
    assert out.first_kept == 2
    assert out.prompt == "<system:Be brief><assistant:bbbb><user:cc>"
    out = render_chat(t, msgs, num_ctx=1, count_tokens=_count_chars)
    assert out.prompt == "<system:Be brief><user:cc>"
    out = render_chat(t, msgs, num_ctx=1, count_tokens=_count_chars, truncate=False)
    assert out.prompt == full


def test_image_markers_count_across_kept_messages() -> None:  # T16
    t = GoTemplate("{{ range .Messages }}{{ .Content }};{{ end }}")
    msgs = [
        Message("user", "a", images=(b"1", b"2")),
        Message("assistant", "ok"),
        Message("user", "see [img] here", images=(b"3",)),
    ]
    out = render_chat(t, msgs)
    assert out.prompt == "[img-0][img-1]a;ok;see [img-2] here;"
    assert out.images == (b"1", b"2", b"3")
    n_without_first = len("ok;see [img] here;")  # counted before markers are added
    out = render_chat(t, msgs, num_ctx=n_without_first, count_tokens=_count_chars)
    assert out.prompt == "ok;see [img-0] here;"
    assert out.images == (b"3",)


def test_generate_builds_messages() -> None:  # GE11, GE12, GE15
    t = GoTemplate(T1)
    hist = [Message("user", "old"), Message("assistant", "new")]
    out = render_generate(t, "Q", model_system="MS", model_messages=hist)
    assert out.prompt == "[SYS]MS[/SYS]\n[U]old[/U]\n[A]new[/A]\n[U]Q[/U]\n[A]"
    out = render_generate(t, "Q", system="RS", model_system="MS", context_text="PREV")
    assert out.prompt == "PREV[SYS]RS[/SYS]\n[U]Q[/U]\n[A]"
    fim = GoTemplate(T3)
    assert render_generate(fim, "a", suffix="b", system="ignored").prompt == "<P>a<S>b<M>"
    override = GoTemplate("{{ .Prompt }}!")
    assert render_generate(t, "Q", override=override, model_system="MS").prompt == "Q!"
    assert render_generate(t, "Q", images=[b"x"]).prompt == "[U][img-0]Q[/U]\n[A]"
    tools_src = "{{ .Tools }}{{ range .Messages }}{{ end }}"
    assert render_generate(GoTemplate(tools_src), "Q").prompt == "[]"
    assert GoTemplate(tools_src).render([U1]) == "null"


def test_drop_old_thinking() -> None:
    msgs = [
        U1,
        Message("assistant", "<think>hmm</think>Hello"),
        U2,
        Message("assistant", "<think>x</think>y"),
    ]
    got = drop_old_thinking(msgs, "<think>", "</think>")
    assert [m.content for m in got] == ["Hi", "Hello", "Why?", "<think>x</think>y"]


# ---------------------------------------------------------------- well-known Ollama templates

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

MISTRAL = """[INST] {{ range $index, $_ := .Messages }}
{{- if eq .Role "system" }}{{ .Content }}

{{ else if eq .Role "user" }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>[INST] {{ end }}
{{- end }}"""

GEMMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if and (eq $i 1) $.System }}
{{ $.System }}
{{ end }}
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- if $last }}<start_of_turn>model
{{ end }}
{{- end }}"""

# A Mistral-style template with tools, in the shape of Ollama's mistral library template.
MISTRAL_TOOLS = """{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and $.Tools (eq (len (slice $.Messages $index)) 1) }}\
[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}</s>
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]</s>
{{- end }}
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}"""

CONVO = [SYS, U1, A1, U2]


def test_chatml() -> None:
    assert GoTemplate(CHATML).render(CONVO) == (
        "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama3() -> None:
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert GoTemplate(LLAMA3).render(CONVO) == (
        h.format("system") + "Be brief<|eot_id|>" + h.format("user") + "Hi<|eot_id|>"
        + h.format("assistant") + "Hello<|eot_id|>" + h.format("user") + "Why?<|eot_id|>"
        + h.format("assistant")
    )  # fmt: skip


def test_mistral() -> None:
    assert GoTemplate(MISTRAL).render(CONVO) == (
        "[INST] Be brief\n\nHi[/INST] Hello</s>[INST] Why?[/INST]"
    )


def test_gemma3_puts_system_into_first_user_turn() -> None:
    assert GoTemplate(GEMMA3).render([U1]) == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    assert GoTemplate(GEMMA3).render(CONVO) == (
        "<start_of_turn>user\nBe brief\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
        "<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_mistral_tools() -> None:
    t = GoTemplate(MISTRAL_TOOLS)
    assert t.capabilities == ("tools",)
    assert t.tool_tag == "[TOOL_CALLS] ["
    call = ToolCall("get_weather", {"city": "Oslo"})
    msgs = [
        Message("user", "Weather?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '"4C"'),
        Message("user", "Thanks"),
    ]
    tools_json = t.render([Message("user", "x")], tools=[WEATHER])[len("[AVAILABLE_TOOLS] ") :]
    assert tools_json.startswith('[{"type":"function","function":{"name":"get_weather"')
    assert t.render(msgs, tools=[WEATHER]) == (
        "[INST] Weather?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Oslo"}}]</s>'
        '[TOOL_RESULTS] {"content": "4C"} [/TOOL_RESULTS]'
        "[AVAILABLE_TOOLS] " + tools_json.split("[/AVAILABLE_TOOLS]")[0] + "[/AVAILABLE_TOOLS]"
        "[INST] Thanks[/INST]"
    )


def test_tool_property_printing_and_typescript() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {
                    "z": {"type": ["string", "null"], "enum": ["a", 1]},
                    "a": {"type": "integer", "minimum": 3},
                },
            },
        },
    }
    src = (
        "{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}"
        "{{ $k }}:{{ $p.Type }}:{{ toTypeScriptType $p }};{{ end }}"
        "{{ .Function.Parameters.Properties }}{{ end }}{{ range .Messages }}{{ end }}"
    )
    assert GoTemplate(src).render([U1], tools=[tool]) == (
        'a:integer:number;z:[string null]:string | null;{"a":{"type":"integer"},'
        '"z":{"type":["string","null"],"enum":["a",1]}}'
    )
    no_desc = GoTemplate("{{ .Tools }}{{ .Messages }}").render([], tools=[tool])
    assert '"description":""' in no_desc  # always present, unlike other keywords


def test_function_prints_as_go_struct_at_the_snapshot() -> None:
    """Ollama's templateToolFunction has no String method: `{{ .Function }}` (used by Qwen 2.5's
    template) prints Go's struct form, while `json .Function` gives JSON."""
    src = "{{ range .Tools }}{{ .Function }}|{{ json .Function }}{{ end }}{{ .Messages }}"
    assert GoTemplate(src).render([], tools=[WEATHER]) == (
        '{get_weather Get weather {object <nil> <nil> [city] {"city":{"type":"string",'
        '"description":"City name"}}}}|{"name":"get_weather","description":"Get weather",'
        '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string",'
        '"description":"City name"}}}}[]'
    )


# ---------------------------------------------------------------- thinking capability


def test_thinking_tags_and_capability() -> None:  # K7
    src = (
        "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
        "{{ .Content }}{{ end }}"
    )
    t = GoTemplate(src)
    assert t.thinking_tags == ("<think>", "</think>")
    assert t.capabilities == ("thinking",)
    assert GoTemplate("{{ range $m := .Messages }}{{ $m.Thinking }}{{ end }}").thinking_tags == (
        "",
        "",
    )


# ---------------------------------------------------------------- Jinja chat templates


def test_smollm2_jinja_template(smollm2_path) -> None:
    meta = GGUFFile(smollm2_path).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    t = load_template(
        None,
        meta["tokenizer.chat_template"],
        bos_token=tokens[int(meta["tokenizer.ggml.bos_token_id"])],
        eos_token=tokens[int(meta["tokenizer.ggml.eos_token_id"])],
    )
    assert isinstance(t, JinjaTemplate)
    default_sys = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n"
    )
    assert t.render([U1]) == default_sys + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(t, CONVO).prompt == (
        "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_gemma3_gguf_has_no_chat_template(gemma3_path) -> None:
    meta = GGUFFile(gemma3_path).metadata
    t = load_template(None, meta.get("tokenizer.chat_template"))
    assert isinstance(t, GoTemplate) and t.source == DEFAULT_TEMPLATE
    assert render_chat(t, [U1]).prompt == "Hi"


# Gemma 3's Hugging Face chat template (tokenizer_config.json of google/gemma-3-*-it).
GEMMA3_JINJA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def test_gemma3_jinja_template() -> None:
    t = JinjaTemplate(GEMMA3_JINJA, bos_token="<bos>", eos_token="<eos>")
    assert t.render(CONVO) == (
        "<bos><start_of_turn>user\nBe brief\n\nHi<end_of_turn>\n<start_of_turn>model\nHello"
        "<end_of_turn>\n<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(TemplateError, match="Conversation roles must alternate"):
        t.render([U1, U2])


def test_jinja_generation_tag_renders_its_body() -> None:
    src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    assert JinjaTemplate(src).render([U1, A1]) == "[Hi][Hello]"


def test_jinja_sandbox_and_syntax_errors() -> None:
    with pytest.raises(TemplateError):
        JinjaTemplate("{% for %}")
    with pytest.raises(TemplateError):
        JinjaTemplate("{{ messages.__class__.__mro__ }}").render([U1])
    t = JinjaTemplate(
        "{{ tools | tojson }}|{{ messages[0].tool_calls[0].function.arguments | tojson }}"
    )
    call = ToolCall("f", {"é": 1})
    assert t.render([Message("assistant", "", tool_calls=(call,))], tools=[{"a": "<"}]) == (
        '[{"a": "<"}]|{"é": 1}'
    )


# ---------------------------------------------------------------- llama.cpp as the oracle

ORACLE_CONVERSATIONS = [
    [U1],
    [SYS, U1],
    [U1, A1, U2],
    CONVO,
    [Message("system", "Sé <b>&"), Message("user", "line1\nline2"), Message("assistant", "ok")],
]


def _llama_cpp_builtin(name: str, messages: list[Message]) -> str:
    """llama.cpp's own rendering with one of its built-in chat formats."""
    import ctypes

    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m.role.encode(), m.content.encode()) for m in messages]
    )
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(messages), True, buf, 1 << 16)
    assert 0 < n < 1 << 16
    return buf.raw[:n].decode()


@needs_oracle
@pytest.mark.oracle
@pytest.mark.parametrize(
    ("source", "builtin"), [(CHATML, "chatml"), (LLAMA3, "llama3"), (GEMMA3, "gemma")]
)
def test_go_templates_match_llama_cpp_builtin_formats(source: str, builtin: str) -> None:
    t = GoTemplate(source)
    for convo in ORACLE_CONVERSATIONS:
        if builtin == "gemma" and convo[-1].role == "assistant":
            continue  # llama.cpp's gemma format still appends a model turn here
        assert t.render(convo) == _llama_cpp_builtin(builtin, convo)


@needs_oracle
@pytest.mark.oracle
def test_jinja_matches_llama_cpp_python_formatter(smollm2_path) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = GGUFFile(smollm2_path).metadata
    tool_src = "{% for t in tools %}{{ t | tojson }}{% endfor %}{{ messages | tojson(indent=1) }}"
    for source in (meta["tokenizer.chat_template"], GEMMA3_JINJA, tool_src):
        ours = JinjaTemplate(source, bos_token="<B>", eos_token="<E>")
        oracle = Jinja2ChatFormatter(source, eos_token="<E>", bos_token="<B>")
        for convo in ORACLE_CONVERSATIONS[1:]:
            if source == GEMMA3_JINJA and convo[-1].role == "assistant":
                continue
            dicts = [{"role": m.role, "content": m.content} for m in convo]
            tools = [WEATHER] if source == tool_src else None
            assert ours.render(convo, tools=tools) == oracle(messages=dicts, tools=tools).prompt


# ---------------------------------------------------------------- robustness


_TEMPLATE_ALPHABET = st.sampled_from(
    ["{{", "}}", "{{- ", " -}}", "/*", "*/", " ", "\n", ".", "$", "$x", ":=", "=", "|", "(", ")",
     '"', "`", "'", "\\", "-", "1", "2.5", "if", "else", "end", "range", "with", "break",
     "continue", "eq", "len", "index", "slice", "printf", "json", "and", "or", "not", "nil",
     "true", ".Messages", ".Role", ".Content", ".System", "$.Tools", ",", "a", "%s"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(_TEMPLATE_ALPHABET, max_size=30).map("".join))
def test_random_templates_fail_only_with_template_error(src: str) -> None:
    try:
        t = GoTemplate(src)
        t.render([SYS, U1, A1], tools=[WEATHER])
        t.render([], prompt="p", suffix="s")
    except TemplateError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_random_text_fails_only_with_template_error(src: str) -> None:
    try:
        GoTemplate(src).render([U1])
    except TemplateError:
        pass


_OPERANDS = st.sampled_from(
    [".System", ".Messages", ".Tools", "$", ".", "$.Messages", '"x"', "`y`", "0", "1", "2.5",
     "true", ".Role", ".Content", ".ToolCalls", ".Function", ".Function.Arguments", ".Nope",
     "$.Tools", ".Think", ".Prompt"]
)  # fmt: skip
_FUNCS = st.sampled_from(
    ["eq", "ne", "lt", "ge", "len", "index", "slice", "json", "printf", "print", "println",
     "and", "or", "not", "toTypeScriptType", "html", "js", "urlquery"]
)  # fmt: skip


def _call(min_args: int) -> st.SearchStrategy[str]:
    return st.tuples(_FUNCS, st.lists(_OPERANDS, min_size=min_args, max_size=3)).map(
        lambda fa: " ".join([fa[0], *fa[1]])
    )


# later pipeline stages must be function calls, which get the previous value as last argument
_PIPELINE = st.tuples(
    st.one_of(_OPERANDS, _call(1), _call(1).map(lambda c: "(" + c + ")")),
    st.lists(_call(0), max_size=2),
).map(lambda p: " | ".join([p[0], *p[1]]))


def _body(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    block = st.tuples(
        st.sampled_from(["if", "with", "range", "range $i, $m :="]),
        _PIPELINE,
        children,
        st.one_of(st.just(""), children.map(lambda c: "{{ else }}" + c)),
    ).map(lambda b: "{{ " + b[0] + " " + b[1] + " }}" + b[2] + b[3] + "{{ end }}")
    return st.lists(
        st.one_of(block, _PIPELINE.map(lambda p: "{{ " + p + " }}"), st.sampled_from(["a", "\n"])),
        max_size=4,
    ).map("".join)


_WELL_FORMED = st.recursive(st.sampled_from(["", "t"]), _body, max_leaves=12)


@settings(max_examples=120, deadline=None)
@given(_WELL_FORMED)
def test_well_formed_templates_execute_or_raise_template_error(src: str) -> None:
    """Random well-formed templates over real message and tool values never crash otherwise."""
    t = GoTemplate(src)
    call = ToolCall("get_weather", {"city": "Oslo", "n": [1, 2.5]})
    msgs = [SYS, U1, Message("assistant", "", tool_calls=(call,)), Message("tool", "4C")]
    for kwargs in ({"tools": [WEATHER]}, {"think": "high"}, {"prompt": "p", "suffix": "s"}):
        try:
            t.render(msgs, **kwargs)
        except TemplateError:
            pass


# ---------------------------------------------------------------- what a Jinja template can do

_QWEN_STYLE = (
    "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
    "{% for m in messages %}{% if m.role == 'assistant' and not m.tool_calls %}{{ m.content }}"
    "{% elif m.tool_calls %}{% for c in m.tool_calls %}{% if c.function is defined %}"
    '{% set c = c.function %}{% endif %}{{ \'\n<tool_call>\n{"name": "\' + c.name }}'
    "{% endfor %}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize(
    ("source", "caps", "tag", "tags"),
    [
        (_QWEN_STYLE, ("tools",), "<tool_call>", ("", "")),
        # a loop writing bare JSON calls: the tag is `{`
        ("{% for c in message['tool_calls'] %}{{ '{\"name\": ' + c.name }}{% endfor %}{{ tools }}",
         ("tools",), "{", ("", "")),
        # "tools" only in literal text, reasoning tags as literals
        ("No tools here. {{ '<think>' }}{{ messages[0].content }}{{ '</think>' }}",
         ("thinking",), "{", ("<think>", "</think>")),
        ("{{ messages[0].content }}", (), "{", ("", "")),
    ],
)  # fmt: skip
def test_jinja_capabilities_and_tags_come_from_the_syntax_tree(
    source: str, caps: tuple[str, ...], tag: str, tags: tuple[str, str]
) -> None:
    t = JinjaTemplate(source)
    assert (t.capabilities, t.tool_tag, t.thinking_tags) == (caps, tag, tags)


def test_jinja_runtime_errors_name_the_template_line() -> None:
    t = JinjaTemplate("{{ bos_token }}\n{% for t in tools %}{{ t }}{% endfor %}")
    with pytest.raises(TemplateError, match=r"not iterable \(line 2: \{% for t in tools %\}"):
        t.render([U1])
