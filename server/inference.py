"""Preparing generate and chat: from a parsed request to a `Job` (spec/ollama-api.md §4.2-§4.3,
§5.2, §6).

`prepare_generate` and `prepare_chat` run Ollama's checks in Ollama's order (server/preflight.py),
load the model, build the message list, render it with the model's template
(engine/chat/templates.py, dropping old history to fit num_ctx), tokenize, compile `format` into a
grammar, and return a `server.job.Job` whose events the app streams; None for a load-only request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from engine.chat.templates import (
    ChatTemplate,
    GoTemplate,
    JinjaTemplate,
    Message,
    RenderedPrompt,
    chat_messages,
    drop_old_thinking,
    render_chat,
    render_generate,
)
from engine.chat.thinking import ThinkingParser
from engine.chat.tools import ChatOutputParser, ToolCall, ToolCallParser
from engine.grammar.json_schema import grammar_for_format
from engine.models.vision import InvalidImage
from engine.sampling.options import Options
from server.errors import InvalidRequest, go_quote
from server.job import Job
from server.preflight import (
    acquire_runner,
    check_format,
    check_think,
    model_capabilities,
    model_template,
    request_options,
)
from server.scheduler import Runner, Scheduler
from server.schemas import (
    ChatRequest,
    GenerateRequest,
)
from server.store import ModelRecord

log = logging.getLogger(__name__)


def _count_tokens(runner: Runner) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(runner.model.tokenize(text, add_special=False, parse_special=True))

    return count


def _tokenize_prompt(
    runner: Runner,
    text: str,
    opts: Options,
    truncate: bool,
    shift: bool,
    images: tuple[bytes, ...] = (),
) -> list[int]:
    """The prompt as the runner tokenizes it: BOS added per the model, special text parsed.

    With `images` (a model with a projector), each `[img-N]` marker becomes image N's rows
    (engine/models/multimodal.py); an image that does not decode is a 400.

    A rendered prompt that already starts with the BOS text (Jinja templates print
    `bos_token`) loses that copy, as Ollama strips it to avoid a double BOS (sampling.md §6.7).
    Over-long prompts are rejected here with Ollama's texts when truncation or shifting is off
    (spec §4.6); otherwise engine/generate.py truncates them as Ollama does.
    """
    tok = runner.model.tokenizer
    if images:
        try:
            ids = runner.model.prompt_ids(text, images)
        except InvalidImage as e:
            raise InvalidRequest(f"invalid image input: {e}") from e
    else:
        ids = tok.encode(text, add_special=True, parse_special=True)
    if tok.add_bos and len(ids) > 1 and ids[0] == ids[1] == tok.bos_id:
        ids = ids[1:]
    if len(ids) > opts.num_ctx - 1:
        if not truncate:
            raise InvalidRequest("the input length exceeds the context length")
        if not shift:
            raise InvalidRequest(
                "the prompt is longer than the context length currently available to the "
                "model; shorten the prompt, adjust the context length in settings, or use a "
                "model with a longer context length"
            )
    return ids


async def prepare_generate(
    record: ModelRecord, req: GenerateRequest, scheduler: Scheduler, arrived: int
) -> Job | None:
    """Spec §4.2 steps 6-13; None for a load request (empty prompt)."""
    if req.raw and (req.template or req.system or req.context):
        raise InvalidRequest("raw mode does not support template, system, or context")
    template = model_template(record)
    caps = model_capabilities(record, template)
    think = check_think(req.model, req.think, caps)
    if "completion" not in caps:
        raise InvalidRequest(f"{go_quote(req.model)} does not support generate")
    if req.suffix and "insert" not in caps:
        raise InvalidRequest(f"{record.parsed.full} does not support insert")
    if req.images and "vision" not in caps:
        raise InvalidRequest(f"{record.parsed.full} does not support vision")
    override = GoTemplate(req.template) if req.template else None
    fmt = check_format(req.format)
    opts = request_options(record, req.options)
    runner, load_ns = await acquire_runner(scheduler, record, opts, req.keep_alive, arrived)
    if not req.prompt:
        scheduler.release(runner)
        return None
    try:
        prompt = await anyio.to_thread.run_sync(
            _render_generate, runner, record, template, override, req, think, opts
        )
        ids = []  # _debug_render_only stops after rendering (spec §4.2 step 13)
        if not req.debug_render_only:
            images = req.images if not req.template else ()
            ids = await anyio.to_thread.run_sync(
                _tokenize_prompt, runner, prompt, opts, req.truncate, req.shift, images
            )
        grammar = grammar_for_format(fmt, chat=False)
    except BaseException:
        scheduler.release(runner)
        raise
    return Job(
        name=req.model,
        kind="generate",
        scheduler=scheduler,
        runner=runner,
        prompt_text=prompt,
        prompt_ids=ids,
        opts=opts,
        arrived_ns=arrived,
        load_ns=load_ns,
        stream=req.stream,
        logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs,
        trace=req.trace,
        shift=req.shift,
        truncate=req.truncate,
        grammar=grammar,
        output=_output_parser(template, prompt, think, ()),
        return_context=not req.raw,
        debug_info=_debug_info(prompt, req.images) if req.debug_render_only else None,
    )


def _render_generate(
    runner: Runner,
    record: ModelRecord,
    template: ChatTemplate,
    override: GoTemplate | None,
    req: GenerateRequest,
    think: bool | str | None,
    opts: Options,
) -> str:
    if req.raw:
        return req.prompt
    context_text = None
    if req.context:
        log.warning("the context field is deprecated and will be removed in a future version")
        context_text = runner.model.detokenize(req.context)
    rendered = render_generate(
        template,
        req.prompt,
        system=req.system,
        model_system=record.system or "",
        model_messages=[_message(m) for m in record.messages],
        suffix=req.suffix,
        images=req.images,
        override=override,
        think=think,
        context_text=context_text,
        num_ctx=opts.num_ctx,
        count_tokens=_count_tokens(runner),
        truncate=req.truncate,
        image_tokens=_image_tokens(record),
    )
    return rendered.prompt


def _message(m: Any) -> Message:
    """A stored MESSAGE entry or a request message as a template Message."""
    if isinstance(m, dict):
        return Message(role=str(m.get("role", "")).lower(), content=str(m.get("content", "")))
    calls = tuple(
        ToolCall(
            name=c.get("function", {}).get("name", ""),
            arguments=c.get("function", {}).get("arguments", {}) or {},
            index=c.get("function", {}).get("index", 0),
            id=c.get("id", ""),
        )
        for c in m.tool_calls
    )
    return Message(
        role=m.role,
        content=m.content,
        thinking=m.thinking,
        images=m.images,
        tool_calls=calls,
        tool_name=m.tool_name,
        tool_call_id=m.tool_call_id,
    )


def _image_tokens(record: ModelRecord) -> int:
    """What one image counts for in history truncation: 768 with a projector (spec §6.4)."""
    return 768 if record.projectors else 0


def _drops_old_thinking(record: ModelRecord) -> bool:
    """Spec §6.2 step 3: only family qwen3, or a model named deepseek-r1, drop the thinking
    of assistant messages before the last user message."""
    return record.details.family == "qwen3" or record.parsed.model.lower() == "deepseek-r1"


def _debug_info(prompt: str, images: tuple[bytes, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {"rendered_template": prompt}
    if images:
        info["image_count"] = len(images)
    return info


def _output_parser(
    template: ChatTemplate, prompt: str, think: bool | str | None, tools: tuple[dict[str, Any], ...]
) -> ChatOutputParser:
    """Thinking split when thinking is on and tags are known (§8.3); tool parsing with tools."""
    opening, closing = template.thinking_tags
    thinking = None
    if think and opening and closing:
        prefilled = prompt.rstrip().endswith(opening)
        thinking = ThinkingParser(opening, closing, prefilled=prefilled)
    parser = None
    if tools:
        names = [str(t.get("function", {}).get("name", "")) for t in tools]
        parser = ToolCallParser(
            template.tool_tag, names, bare_json=isinstance(template, JinjaTemplate)
        )
    return ChatOutputParser(thinking=thinking, tools=parser)


async def prepare_chat(
    record: ModelRecord, req: ChatRequest, scheduler: Scheduler, arrived: int
) -> Job | None:
    """Spec §5.2 steps 6-11; None for a load request (empty messages)."""
    template = model_template(record)
    caps = model_capabilities(record, template)
    think = check_think(req.model, req.think, caps)
    if "completion" not in caps:
        raise InvalidRequest(f"{go_quote(req.model)} does not support chat")
    if req.tools and "tools" not in caps:
        raise InvalidRequest(f"{record.parsed.full} does not support tools")
    if any(m.images for m in req.messages) and "vision" not in caps:
        raise InvalidRequest(f"{record.parsed.full} does not support vision")
    fmt = check_format(req.format)
    opts = request_options(record, req.options)
    runner, load_ns = await acquire_runner(scheduler, record, opts, req.keep_alive, arrived)
    if not req.messages:
        scheduler.release(runner)
        return None
    try:
        messages = chat_messages(
            [_message(m) for m in req.messages],
            model_system=record.system or "",
            model_messages=[_message(m) for m in record.messages],
        )
        opening, closing = template.thinking_tags
        if _drops_old_thinking(record) and opening and closing:
            messages = drop_old_thinking(messages, opening, closing)

        def render(msgs: list[Message]) -> RenderedPrompt:
            return render_chat(
                template,
                msgs,
                tools=list(req.tools) or None,
                think=think,
                num_ctx=opts.num_ctx,
                count_tokens=_count_tokens(runner),
                truncate=req.truncate,
                image_tokens=_image_tokens(record),
            )

        rendered = await anyio.to_thread.run_sync(render, messages)
        ids = []  # _debug_render_only stops after rendering (spec §5.2 step 11)
        if not req.debug_render_only:
            ids = await anyio.to_thread.run_sync(
                _tokenize_prompt, runner, rendered.prompt, opts, req.truncate, req.shift,
                rendered.images,
            )  # fmt: skip
        grammar = grammar_for_format(fmt, chat=True)
    except BaseException:
        scheduler.release(runner)
        raise
    output = _output_parser(template, rendered.prompt, think, req.tools)
    rethink = None
    if grammar is not None and output.thinking is not None:

        def rethink(thought: str) -> tuple[str, list[int]]:
            prompt = render([*messages, Message("assistant", thinking=thought)]).prompt
            ids = _tokenize_prompt(runner, prompt, opts, req.truncate, req.shift, rendered.images)
            return prompt, ids

    return Job(
        name=req.model,
        kind="chat",
        scheduler=scheduler,
        runner=runner,
        prompt_text=rendered.prompt,
        prompt_ids=ids,
        opts=opts,
        arrived_ns=arrived,
        load_ns=load_ns,
        stream=req.stream,
        logprobs=req.logprobs or req.top_logprobs > 0,
        top_logprobs=req.top_logprobs,
        trace=req.trace,
        shift=req.shift,
        truncate=req.truncate,
        grammar=grammar,
        output=output,
        has_tools=bool(req.tools),
        debug_info=_debug_info(rendered.prompt, rendered.images) if req.debug_render_only else None,
        rethink=rethink,
        answer_output=ChatOutputParser(
            thinking=output.thinking, tools=_output_parser(template, "", False, req.tools).tools
        ),
    )
