"""The Jinja path on 70 chat templates nobody here wrote: llama.cpp's `models/templates/*.jinja`
(from the pinned llama-cpp-python sdist), each rendered with five conversations.

The conversations go in as an Ollama client sends them (`/api/chat` JSON through the server's
own request parsing and message conversion) and are rendered by engine.chat.templates.JinjaTemplate.
The reference is the renderer transformers' `apply_chat_template` runs, rebuilt here from jinja2
with the same environment and globals (transformers itself is not installed: it is heavy and
needs torch): an immutable sandbox with `trim_blocks`, `lstrip_blocks`, loop controls and
`{% generation %}`, `tojson` as `json.dumps(ensure_ascii=False)`, `raise_exception`,
`strftime_now`, the special tokens, `add_generation_prompt=True`, and the conversation in
the OpenAI message shape HF documents (tool calls with dict arguments, `reasoning_content`).

Each (template, conversation) is rendered-equal, a clear error (ours raises TemplateError with
the template's own message because the reference fails the same way), or wrong; wrong must be
zero.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest

from engine.chat.templates import JinjaTemplate
from engine.errors import TemplateError
from server.inference import _message
from server.schemas import ChatRequest

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "The city's name"}},
        },
    },
}
_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}
_HF_CALL = {
    "type": "function",
    "id": "call_1",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}

# (name, Ollama /api/chat body without the model, the same conversation as HF messages, kwargs)
CONVERSATIONS: list[tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, Any]]] = [
    (
        "system",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        },
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        {},
    ),
    (
        "multi-turn",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Name a colour."},
            ]
        },
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Name a colour."},
        ],
        {},
    ),
    (
        "tools",
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [_WEATHER]},
        [{"role": "user", "content": "Weather in Paris?"}],
        {"tools": [_WEATHER]},
    ),
    (
        "tool-results",
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [_CALL]},
                {"role": "tool", "content": "22 C, sunny", "tool_call_id": "call_1"},
            ],
            "tools": [_WEATHER],
        },
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [_HF_CALL]},
            {"role": "tool", "content": "22 C, sunny", "tool_call_id": "call_1"},
        ],
        {"tools": [_WEATHER]},
    ),
    (
        "thinking",
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4", "thinking": "Add them."},
                {"role": "user", "content": "And 3+3?"},
            ],
            "think": True,
        },
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
            {"role": "user", "content": "And 3+3?"},
        ],
        {"enable_thinking": True},
    ),
]

BOS, EOS = "<s>", "</s>"


class _Generation(jinja2.ext.Extension):
    """HF's AssistantTracker with assistant masks off: `{% generation %}` renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _reference(source: str) -> jinja2.Template:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def _templates(models: Path) -> list[Path]:
    return sorted((models / "templates").glob("*.jinja"))


def _classify(
    source: str, body: dict[str, Any], hf: list[dict[str, Any]], kw: dict[str, Any]
) -> str:
    req = ChatRequest.from_body(json.dumps({"model": "m", **body}).encode())
    messages = [_message(m) for m in req.messages]
    try:
        want: str | None = _reference(source).render(
            messages=hf, add_generation_prompt=True, bos_token=BOS, eos_token=EOS,
            **{"tools": None, **kw},
        )  # fmt: skip
        ref_error = ""
    except Exception as e:  # what apply_chat_template would raise: the template's own failure
        want, ref_error = None, str(e)
    try:
        got = JinjaTemplate(source, bos_token=BOS, eos_token=EOS).render(
            messages, tools=list(req.tools) or None, think=req.think
        )
    except TemplateError as e:
        if want is None and ref_error and ref_error in str(e):
            return "clear-error"
        reference = "renders" if want is not None else f"fails: {ref_error}"
        return f"wrong: ours fails with {e}, the reference {reference}"
    if got == want:
        return "equal"
    return (
        "wrong: rendered text differs"
        if want is not None
        else f"wrong: reference fails ({ref_error})"
    )


def test_corpus_has_the_70_templates(llama_cpp_models: Path) -> None:
    assert len(_templates(llama_cpp_models)) == 70


@pytest.mark.parametrize("conversation", [c[0] for c in CONVERSATIONS])
def test_every_template_renders_as_the_reference_or_fails_clearly(
    llama_cpp_models: Path, conversation: str
) -> None:
    _, body, hf, kw = next(c for c in CONVERSATIONS if c[0] == conversation)
    results = {
        p.name: _classify(p.read_text(encoding="utf-8"), body, hf, kw)
        for p in _templates(llama_cpp_models)
    }
    wrong = {k: v for k, v in results.items() if v.startswith("wrong")}
    assert wrong == {}
    assert sum(v == "equal" for v in results.values()) >= 1
