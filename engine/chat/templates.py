"""Prompt construction: chat messages and tools in, prompt text out (spec ollama-api.md §6–§8).

Two template kinds share one interface (`render`, `capabilities`, `tool_tag`, `thinking_tags`):
`GoTemplate`, Ollama's Go text/template with its three execution modes (Ollama
`template/template.go`), and `JinjaTemplate`, a GGUF `tokenizer.chat_template` rendered the way
Hugging Face's `apply_chat_template` does. `render_chat` and `render_generate` build the message
list, drop old history to fit `num_ctx` (Ollama `server/prompt.go`) and render. No tokenizing
happens here: the caller passes a token counter.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes as jn
import jinja2.sandbox

from engine.chat import gotemplate as go
from engine.chat import govalues as gv
from engine.chat.goexec import execute
from engine.chat.thinking import GO_SPACE, ThinkingParser, infer_thinking_tags
from engine.chat.tools import ToolCall, tool_call_tag
from engine.errors import TemplateError

DEFAULT_TEMPLATE = "{{ .Prompt }}"  # what a model without any template gets (spec §6.1)
THINK_LEVELS = ("high", "medium", "low", "max")

ThinkValue = Union[bool, str, None]  # noqa: UP007 (a runtime alias; `X | Y` of None fails here)
TokenCounter = Callable[[str], int]  # tokens in a rendered prompt: no BOS added, specials parsed


@dataclass(frozen=True)
class Message:
    """One chat message. `role` is lowercased by the caller, as Ollama does on input."""

    role: str
    content: str = ""
    thinking: str = ""
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt, the images of the kept messages in marker order, and the first kept
    message's index in the list that was rendered (0 when nothing was dropped)."""

    prompt: str
    images: tuple[bytes, ...] = ()
    first_kept: int = 0


# ---------------------------------------------------------------- values templates see (§6.6)


def _go_any(v: Any) -> Any:
    """A JSON value as Go decodes it into `any`: every number becomes a float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, list):
        return [_go_any(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _go_any(x) for k, x in v.items()}
    return v


@dataclass
class _ToolProperty(gv.Struct):
    go_type: ClassVar[str] = "api.ToolProperty"
    AnyOf: list[_ToolProperty] = gv.json_tag("anyOf,omitempty")
    Type: gv.PropertyType = gv.json_tag("type,omitempty")
    Items: Any = gv.json_tag("items,omitempty")
    Description: str = gv.json_tag("description,omitempty")
    Enum: list[Any] = gv.json_tag("enum,omitempty")
    # nested: insertion order, as Ollama's ordered map
    Properties: gv.JSONMap | None = gv.json_tag("properties,omitempty")
    Required: list[str] = gv.json_tag("required,omitempty")

    def to_typescript(self) -> str:
        """Ollama's ToolProperty.ToTypeScriptType (the `toTypeScriptType` template function)."""
        if self.AnyOf:
            return " | ".join(p.to_typescript() for p in self.AnyOf)
        names = {"string": "string", "number": "number", "integer": "number"}
        names |= {"boolean": "boolean", "array": "any[]", "object": "Record<string, any>"}
        names |= {"null": "null"}
        return " | ".join(names.get(t, "any") for t in self.Type) or "any"


def _property(d: Mapping[str, Any]) -> _ToolProperty:
    t = d.get("type")
    props = d.get("properties")
    return _ToolProperty(
        AnyOf=[_property(x) for x in d.get("anyOf") or [] if isinstance(x, dict)],
        Type=gv.PropertyType([t] if isinstance(t, str) else list(t or [])),
        Items=_go_any(d.get("items")),
        Description=str(d.get("description") or ""),
        Enum=_go_any(list(d.get("enum") or [])),
        Properties=(
            gv.JSONMap({k: _property(v) for k, v in props.items()}, ordered=True)
            if isinstance(props, dict)
            else None
        ),
        Required=list(d.get("required") or []),
    )


@dataclass
class _Parameters(gv.Struct):
    go_type: ClassVar[str] = "template.templateToolFunctionParameters"
    Type: str = gv.json_tag("type")
    Defs: Any = gv.json_tag("$defs,omitempty")
    Items: Any = gv.json_tag("items,omitempty")
    Required: list[str] = gv.json_tag("required,omitempty")
    # sorted keys when printed or marshalled
    Properties: gv.JSONMap = gv.json_tag("properties")


@dataclass
class _Function(gv.Struct):
    go_type: ClassVar[str] = "template.templateToolFunction"
    Name: str = gv.json_tag("name")
    Description: str = gv.json_tag("description")
    Parameters: _Parameters = gv.json_tag("parameters")


@dataclass
class _Tool(gv.Struct):
    go_type: ClassVar[str] = "template.templateTool"
    Type: str = gv.json_tag("type")
    Items: Any = gv.json_tag("items,omitempty")
    Function: _Function = gv.json_tag("function")

    def go_string(self) -> str:
        return gv.go_json(self)


def _tool(d: Mapping[str, Any]) -> _Tool:
    fn = d.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    return _Tool(
        Type=str(d.get("type") or ""),
        Items=_go_any(d.get("items")),
        Function=_Function(
            Name=str(fn.get("name") or ""),
            Description=str(fn.get("description") or ""),
            Parameters=_Parameters(
                Type=str(params.get("type") or ""),
                Defs=_go_any(params.get("$defs")),
                Items=_go_any(params.get("items")),
                Required=list(params.get("required") or []),
                Properties=gv.JSONMap(
                    {k: _property(v) for k, v in (props or {}).items()}, nil=props is None
                ),
            ),
        ),
    )


@dataclass
class _CallFunction(gv.Struct):
    go_type: ClassVar[str] = "template.templateToolCallFunction"
    Index: int
    Name: str
    Arguments: gv.JSONMap


@dataclass
class _Call(gv.Struct):
    go_type: ClassVar[str] = "template.templateToolCall"
    ID: str
    Function: _CallFunction


@dataclass
class _Message(gv.Struct):
    go_type: ClassVar[str] = "*template.templateMessage"
    Role: str
    Content: str
    Thinking: str
    Images: list[bytes]
    ToolCalls: list[_Call]
    ToolName: str
    ToolCallID: str


def _template_message(m: Message) -> _Message:
    calls = [
        _Call(c.id, _CallFunction(c.index, c.name, gv.JSONMap(_go_any(c.arguments))))
        for c in m.tool_calls
    ]
    return _Message(
        m.role, m.content, m.thinking, list(m.images), calls, m.tool_name, m.tool_call_id
    )


def think_values(think: ThinkValue) -> dict[str, Any]:
    """`.Think`, `.ThinkLevel`, `.IsThinkSet` for a request's `think` (spec §8.2).

    Pass the value after the server's default (true on thinking models when absent) is applied.
    """
    return {
        "Think": think is True or (isinstance(think, str) and think in THINK_LEVELS),
        "ThinkLevel": think if isinstance(think, str) else "medium" if think is True else "",
        "IsThinkSet": think is not None,
    }


def collate(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """(system text, merged list): all system contents joined by blank lines, and runs of
    same-role messages merged into the first of the run (`tool` messages never merge)."""
    system = [m.content for m in messages if m.role == "system"]
    merged: list[Message] = []
    for m in messages:
        if merged and merged[-1].role == m.role and m.role != "tool":
            last = merged[-1]
            merged[-1] = dataclasses.replace(last, content=last.content + "\n\n" + m.content)
        else:
            merged.append(m)
    return "\n\n".join(system), merged


# ---------------------------------------------------------------- Go templates


def _identifiers(nodes: Sequence[go.Node]) -> set[str]:
    """Lowercased field and variable names, as Ollama's `Vars` (chains are not entered)."""
    names: set[str] = set()

    def visit(n: go.Node) -> None:
        if isinstance(n, go.Field | go.Variable):
            names.update(i.lower() for i in n.idents)
        elif isinstance(n, go.Action):
            visit(n.pipe)
        elif isinstance(n, go.Pipe):
            for c in n.cmds:
                for a in c.args:
                    visit(a)
        elif isinstance(n, go.Branch):
            visit(n.pipe)
            for b in (*n.body, *(n.else_body or [])):
                visit(b)

    for n in nodes:
        visit(n)
    return names


def _cut_after_response(nodes: list[go.Node]) -> list[go.Node]:
    """Ollama's legacy-mode cut: keep nodes up to the first `.Response` field in an action.

    Conditions of if/range/with are not searched. Where Ollama would panic on an else branch
    after the cut, the else branch is dropped instead.
    """
    cut = False

    def walk_list(body: list[go.Node]) -> list[go.Node]:
        out = []
        for n in body:
            kept = walk(n)
            if kept is not None:
                out.append(kept)
        return out

    def walk_pipe(p: go.Pipe) -> go.Pipe | None:
        nonlocal cut
        cmds = []
        for c in p.cmds:
            args = []
            for a in c.args:
                if isinstance(a, go.Field) and "Response" in a.idents:
                    cut = True
                    args.append(a)
                elif not cut:
                    sub = walk_pipe(a) if isinstance(a, go.Pipe) else a
                    if sub is not None:
                        args.append(sub)
            if args:
                cmds.append(go.Command(c.pos, args))
        return dataclasses.replace(p, cmds=cmds) if cmds else None

    def walk(n: go.Node) -> go.Node | None:
        if cut:
            return None
        if isinstance(n, go.Action):
            pipe = walk_pipe(n.pipe)
            return go.Action(n.pos, pipe) if pipe is not None else None
        if isinstance(n, go.Branch):
            body = walk_list(n.body)
            else_body = None if cut or n.else_body is None else walk_list(n.else_body)
            return dataclasses.replace(n, body=body, else_body=else_body)
        return n

    return walk_list(nodes)


class GoTemplate:
    """An Ollama Go template, parsed once (spec §6.5, §6.7)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = go.parse(source)
        self.identifiers = frozenset(_identifiers(self.nodes))
        if "messages" not in self.identifiers and "response" not in self.identifiers:
            # Ollama appends `{{ .Response }}` to templates that mention neither
            self.nodes.append(go.Action(len(source), _RESPONSE_PIPE))
            self.identifiers |= {"response"}
        self._legacy_tail = _cut_after_response(self.nodes)
        self.tool_tag = tool_call_tag(self.nodes)
        self.thinking_tags = infer_thinking_tags(self.nodes)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Template-derived capabilities, in Ollama's order: tools, insert, thinking."""
        caps = []
        if "tools" in self.identifiers:
            caps.append("tools")
        if "suffix" in self.identifiers:
            caps.append("insert")
        if all(self.thinking_tags):
            caps.append("thinking")
        return tuple(caps)

    def _run(self, nodes: list[go.Node], data: dict[str, Any]) -> str:
        return execute(self.source, nodes, data)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        think: ThinkValue = None,
        prompt: str = "",
        suffix: str = "",
    ) -> str:
        """Ollama's `Template.Execute`: fill-in-the-middle, messages or legacy mode (§6.5).

        `prompt` and `suffix` (both non-empty) select fill-in-the-middle mode; `tools` None and
        `[]` differ as Go's nil and empty slices do (`{{ .Tools }}` prints `null` or `[]`).
        """
        tv = think_values(think)
        if prompt and suffix:
            return self._run(self.nodes, {"Prompt": prompt, "Suffix": suffix, "Response": ""} | tv)
        system, merged = collate(messages)
        if "messages" in self.identifiers:
            return self._run(
                self.nodes,
                {
                    "System": system,
                    "Messages": [_template_message(m) for m in merged],
                    "Tools": gv.JSONList([_tool(t) for t in tools or []], nil=tools is None),
                    "Response": "",
                }
                | tv,
            )
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}

        def flush() -> None:
            out.append(self._run(self.nodes, turn | tv))
            turn.update(System="", Prompt="", Response="")

        for m in merged:
            if m.role == "system":
                if turn["Prompt"] or turn["Response"]:
                    flush()
                turn["System"] = m.content
            elif m.role == "user":
                if turn["Response"]:
                    flush()
                turn["Prompt"] = m.content
            elif m.role == "assistant":
                turn["Response"] = m.content
        out.append(self._run(self._legacy_tail, turn | tv))
        return "".join(out)


_RESPONSE_PIPE = go.Pipe(0, [], False, [go.Command(0, [go.Field(0, ("Response",))])], ".Response")


# ---------------------------------------------------------------- Jinja templates


class _GenerationTag(jinja2.ext.Extension):
    """Transformers' `{% generation %}…{% endgeneration %}` marks assistant text; it renders its
    body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _jinja_message(m: Message) -> dict[str, Any]:
    """A message in the OpenAI-style shape HF chat templates expect."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        d["reasoning_content"] = m.thinking
    if m.tool_calls:
        d["tool_calls"] = [
            {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_name:
        d["name"] = m.tool_name
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    return d


def _mentions_tool_calls(node: jn.Node) -> bool:
    """Whether an expression reads `….tool_calls`, `…['tool_calls']` or a `tool_calls` name."""
    for n in (node, *node.find_all((jn.Getattr, jn.Getitem, jn.Name))):
        if isinstance(n, jn.Getattr) and n.attr == "tool_calls":
            return True
        if (
            isinstance(n, jn.Getitem)
            and isinstance(n.arg, jn.Const)
            and n.arg.value == "tool_calls"
        ):
            return True
        if isinstance(n, jn.Name) and n.name == "tool_calls":
            return True
    return False


def _leading_text(expr: jn.Node) -> str | None:
    """The literal text an output expression starts with, None when it starts with a value."""
    if isinstance(expr, jn.TemplateData):
        return expr.data
    if isinstance(expr, jn.Const):
        return expr.value if isinstance(expr.value, str) else None
    if isinstance(expr, jn.Add | jn.Concat):
        first = expr.left if isinstance(expr, jn.Add) else expr.nodes[0]
        return _leading_text(first)
    return None


def _first_output_text(body: Sequence[jn.Node]) -> str | None:
    """First non-blank literal output in a statement list, depth first (as Ollama's search of a
    Go `{{ if .ToolCalls }}` block); an output that starts with a value ends the search."""
    for stmt in body:
        if isinstance(stmt, jn.Output):
            for expr in stmt.nodes:
                text = _leading_text(expr)
                if text is None:
                    return None
                if text.strip(GO_SPACE):
                    return text
        elif isinstance(stmt, jn.If | jn.For | jn.With | jn.Scope):
            found = _first_output_text(stmt.body)
            if found is not None:
                return found
    return None


def _jinja_tool_tag(ast: jn.Template) -> str:
    """The text that starts a tool call, from how the template writes an assistant's calls.

    The first `{% for … in ….tool_calls %}` loop (else the first `{% if ….tool_calls %}`) is
    searched for its first literal output; the text before any `{`, trimmed, is the tag (Qwen's
    `<tool_call>`), and `{` when nothing is left (bare JSON calls), as for Go templates (§7.4).
    """
    loops = [n for n in ast.find_all(jn.For) if _mentions_tool_calls(n.iter)]
    branches = [n for n in ast.find_all(jn.If) if _mentions_tool_calls(n.test)]
    for block in (*loops, *branches):
        text = _first_output_text(block.body)
        if text is not None:
            return text.replace("\r\n", "\n").partition("{")[0].strip(GO_SPACE) or "{"
    return "{"


_THINK_TAGS = (("<think>", "</think>"), ("<thinking>", "</thinking>"))


def _jinja_thinking_tags(ast: jn.Template) -> tuple[str, str]:
    """The first known pair of reasoning tags that both appear in the template's literals."""
    literals = [n.value for n in ast.find_all(jn.Const) if isinstance(n.value, str)]
    literals += [n.data for n in ast.find_all(jn.TemplateData)]
    for opening, closing in _THINK_TAGS:
        if any(opening in t for t in literals) and any(closing in t for t in literals):
            return opening, closing
    return "", ""


class JinjaTemplate:
    """A GGUF `tokenizer.chat_template`, rendered like transformers' `apply_chat_template`:
    sandboxed, `trim_blocks` and `lstrip_blocks`, loop controls, `{% generation %}`, `tojson`
    without ASCII escaping, `raise_exception`, `strftime_now`, and `bos_token`/`eos_token`.

    What it can do is read from its syntax tree: `tools` when it reads a `tools` variable,
    `thinking` when its literals hold a pair of reasoning tags; the tool-call tag comes from the
    loop that writes an assistant message's `tool_calls`. Jinja chat templates have no
    fill-in-the-middle mode, so `insert` is never derived.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _GenerationTag],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            ast = env.parse(source)
            self._template = env.from_string(ast)
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"chat template: {e}") from None
        self.tool_tag = _jinja_tool_tag(ast)
        self.thinking_tags = _jinja_thinking_tags(ast)
        variables = jinja2.meta.find_undeclared_variables(ast)
        caps = ["tools"] if "tools" in variables else []
        self._capabilities = tuple(caps + (["thinking"] if all(self.thinking_tags) else []))

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self._capabilities

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        think: ThinkValue = None,
        prompt: str = "",
        suffix: str = "",
    ) -> str:
        """Render with `add_generation_prompt=True`. `enable_thinking` is passed when `think` is
        set; `prompt`/`suffix` must be empty (Jinja chat templates have no insert mode)."""
        if prompt and suffix:
            raise TemplateError("chat template does not support insert")
        extra = {} if think is None else {"enable_thinking": think_values(think)["Think"]}
        try:
            return self._template.render(
                messages=[_jinja_message(m) for m in messages],
                tools=list(tools) if tools else None,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except (jinja2.exceptions.TemplateError, TypeError, ValueError) as e:
            raise TemplateError(f"chat template: {e}{self._where(e)}") from None

    def _where(self, e: BaseException) -> str:
        """` (line N: text)`, the template line that failed, from jinja2's rewritten traceback
        (its frames of the template are named `<template>`); "" when none is there."""
        tb, line = e.__traceback__, 0
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
        lines = self.source.splitlines()
        if not 0 < line <= len(lines):
            return ""
        return f" (line {line}: {lines[line - 1].strip()[:120]})"


ChatTemplate = GoTemplate | JinjaTemplate


def load_template(
    go_source: str | None, jinja_source: str | None = None, *, bos_token: str = "",
    eos_token: str = "",
) -> ChatTemplate:  # fmt: skip
    """The model's template: its Go TEMPLATE if any, else the GGUF Jinja template if any, else
    Ollama's default `{{ .Prompt }}`."""
    if go_source:
        return GoTemplate(go_source)
    if jinja_source:
        return JinjaTemplate(jinja_source, bos_token=bos_token, eos_token=eos_token)
    return GoTemplate(DEFAULT_TEMPLATE)


# ---------------------------------------------------------------- building prompts


def chat_messages(
    request: Sequence[Message], *, model_system: str = "", model_messages: Sequence[Message] = ()
) -> list[Message]:
    """Spec §6.2 steps 1–2: model MESSAGE history, then the request's messages, with the
    model's SYSTEM prepended unless the request starts with a system message."""
    out = [*model_messages, *request]
    if model_system and not (request and request[0].role == "system"):
        out.insert(0, Message("system", model_system))
    return out


def drop_old_thinking(messages: Sequence[Message], opening: str, closing: str) -> list[Message]:
    """Spec §6.2 step 3 (qwen3 and deepseek-r1 only): assistant messages before the last user
    message keep only the non-thinking part of their content."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    out = []
    for i, m in enumerate(messages):
        if m.role == "assistant" and i < last_user:
            _, content = ThinkingParser(opening, closing).add(m.content)
            m = dataclasses.replace(m, content=content)
        out.append(m)
    return out


def _with_image_markers(messages: Sequence[Message]) -> tuple[list[Message], tuple[bytes, ...]]:
    """`[img-N]` before each message's text (or replacing literal `[img]`), N counting from 0."""
    out, images = [], []
    for m in messages:
        prefix, content = "", m.content
        for img in m.images:
            tag = f"[img-{len(images)}]"
            images.append(img)
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        out.append(dataclasses.replace(m, content=prefix + content) if m.images else m)
    return out, tuple(images)


def render_chat(
    template: ChatTemplate,
    messages: Sequence[Message],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    think: ThinkValue = None,
    num_ctx: int | None = None,
    count_tokens: TokenCounter | None = None,
    truncate: bool = True,
    image_tokens: int = 0,
) -> RenderedPrompt:
    """Render a full message list (from `chat_messages`), dropping the oldest messages to fit.

    With `truncate` and a `count_tokens`/`num_ctx`, finds the first i such that the system
    messages before i plus messages[i:] render to at most `num_ctx` tokens (each image adds
    `image_tokens`; pass 768 for models with a projector), keeping at least the last message
    (Ollama `chatPrompt`, spec §6.4). Image markers are added to the kept messages only.
    """
    first = 0
    if truncate and count_tokens is not None and num_ctx is not None:
        for i in range(len(messages)):
            kept = [m for m in messages[:i] if m.role == "system"] + list(messages[i:])
            n = count_tokens(template.render(kept, tools=tools, think=think))
            n += image_tokens * sum(len(m.images) for m in messages[i:])
            if n <= num_ctx or i == len(messages) - 1:
                first = i
                break
    system = [m for m in messages[:first] if m.role == "system"]
    tagged, images = _with_image_markers(messages[first:])
    prompt = template.render(system + tagged, tools=tools, think=think)
    return RenderedPrompt(prompt, images, first)


def render_generate(
    template: ChatTemplate,
    prompt: str,
    *,
    system: str = "",
    model_system: str = "",
    model_messages: Sequence[Message] = (),
    suffix: str = "",
    images: Sequence[bytes] = (),
    override: GoTemplate | None = None,
    think: ThinkValue = None,
    context_text: str | None = None,
    num_ctx: int | None = None,
    count_tokens: TokenCounter | None = None,
    truncate: bool = True,
    image_tokens: int = 0,
) -> RenderedPrompt:
    """The prompt `/api/generate` sends to the model when `raw` is false (spec §4.3, §6.3).

    `override` is the request's parsed `template`. `context_text` is the detokenized `context`
    of an earlier response: it is prepended, and the model's MESSAGE history is then left out.
    With `suffix`, fill-in-the-middle mode runs with only the prompt and suffix. With
    `override`, the list is rendered once, without truncation or image markers.
    """
    prefix = context_text or ""
    tmpl = override or template
    if suffix:
        return RenderedPrompt(prefix + tmpl.render([], think=think, prompt=prompt, suffix=suffix))
    msgs = []
    if system or model_system:
        msgs.append(Message("system", system or model_system))
    if context_text is None:
        msgs.extend(model_messages)
    msgs.append(Message("user", prompt, images=tuple(images)))
    if override is not None:
        return RenderedPrompt(prefix + override.render(msgs, think=think), tuple(images))
    out = render_chat(
        template, msgs, tools=[], think=think, num_ctx=num_ctx, count_tokens=count_tokens,
        truncate=truncate, image_tokens=image_tokens,
    )  # fmt: skip
    return dataclasses.replace(out, prompt=prefix + out.prompt)
