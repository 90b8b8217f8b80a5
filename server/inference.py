"""From a parsed request to response events: prompts, generation, embeddings, tokenizing.

The HTTP layer (server/app.py) calls `prepare_generate` / `prepare_chat`, which run every check
Ollama runs before generating (spec/ollama-api.md §4.2, §5.2), load the model, render and
tokenize the prompt, and return a `Job`. `Job.events()` is a plain generator of event dicts
(one per text piece, then the final one with counts and durations); the app streams it from a
worker thread or folds it with `Job.combine` for `stream: false`. Engine calls run under the
runner's lock, one step at a time, so concurrent requests interleave without sharing state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from engine.errors import EngineError, InvalidOption
from engine.generate import Step, generate
from engine.gguf import GGUFFile
from engine.grammar.constraint import GrammarConstraint, trie_for
from engine.json_schema import grammar_for_format
from engine.options import Options, resolve
from engine.sampling import SampleTrace
from engine.templates import (
    ChatTemplate,
    GoTemplate,
    Message,
    RenderedPrompt,
    chat_messages,
    load_template,
    render_chat,
    render_generate,
)
from engine.thinking import ThinkingParser
from engine.tools import ChatOutputParser, Delta, ToolCall, ToolCallParser
from server.errors import InvalidRequest, ServerError, go_quote
from server.routes_models import capabilities
from server.scheduler import Runner, Scheduler
from server.schemas import (
    ChatRequest,
    DetokenizeRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Metrics,
    TokenizeRequest,
    chat_event,
    float32_list,
    generate_event,
    logprob_entry,
)
from server.store import ModelRecord

log = logging.getLogger(__name__)


class InvalidFormat(ServerError):
    """`format` is neither "json" nor a schema object: Ollama answers 500 (spec §9)."""

    def __init__(self, value: Any) -> None:
        raw = json.dumps(value, separators=(",", ":"))
        super().__init__(
            f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object'
        )


# --------------------------------------------------------------------------------------------
# Checks shared by generate and chat


@dataclass(frozen=True)
class _GGUFPromptFacts:
    """What prompt building and pooling read from a model's GGUF before it is loaded."""

    chat_template: str | None  # tokenizer.chat_template (Jinja)
    bos_token: str
    eos_token: str
    pooling_type: int  # {arch}.pooling_type: 0 none, 1 mean, 2 cls, 3 last
    context_length: int  # {arch}.context_length, the training context (0 if absent)


@functools.lru_cache(maxsize=32)
def _gguf_facts(path: Path) -> _GGUFPromptFacts:
    meta = GGUFFile(path).metadata
    tokens = meta.get("tokenizer.ggml.tokens") or []
    arch = meta.get("general.architecture", "")

    def token(key: str) -> str:
        i = meta.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    source = meta.get("tokenizer.chat_template")
    return _GGUFPromptFacts(
        chat_template=source if isinstance(source, str) else None,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=token("tokenizer.ggml.eos_token_id"),
        pooling_type=int(meta.get(f"{arch}.pooling_type", 0)),
        context_length=int(meta.get(f"{arch}.context_length", 0)),
    )


def model_template(record: ModelRecord) -> ChatTemplate:
    """The template a stored model renders with: its TEMPLATE layer, else the GGUF's Jinja
    template, else Ollama's `{{ .Prompt }}` (spec §6.1)."""
    if record.template:
        return load_template(record.template)
    facts = _gguf_facts(record.gguf_path)
    return load_template(
        None, facts.chat_template, bos_token=facts.bos_token, eos_token=facts.eos_token
    )


def model_capabilities(record: ModelRecord, template: ChatTemplate) -> set[str]:
    """Ollama's capabilities (spec §11.2.3) plus the template's, thinking included (§8.1)."""
    return set(capabilities(record)) | set(template.capabilities)


def check_think(model: str, think: bool | str | None, caps: set[str]) -> bool | str | None:
    """Spec §4.2 step 7: default on for thinking models; an error if asked of other models."""
    if "thinking" in caps:
        return True if think is None else think
    if think:
        raise InvalidRequest(f"{go_quote(model)} does not support thinking")
    return think


def check_format(value: Any) -> str | dict[str, Any] | None:
    if value is None or value == "" or value == "json" or isinstance(value, dict):
        return value or None
    raise InvalidFormat(value)


def request_options(record: ModelRecord, options: dict[str, Any]) -> Options:
    """Defaults < OLLAMA_CONTEXT_LENGTH < model parameters < request options (spec §2.4).

    A value of the wrong JSON type fails as Ollama fails it: 500 `option "k" must be of type
    ...` (§2.3). A well-typed value outside the range this engine accepts is a 400 carrying
    engine/options.py's explanation (Ollama checks no ranges; llama-server would reject or
    silently clamp them).
    """
    env_ctx = int(os.environ.get("OLLAMA_CONTEXT_LENGTH") or 0)
    base = {"num_ctx": env_ctx} if env_ctx else {}
    try:
        opts = resolve({**base, **record.parameters}, options)
    except InvalidOption as e:
        go_type = _OPTION_TYPES.get(e.allowed)
        if go_type is None:
            raise InvalidRequest(str(e)) from e
        if go_type == "array" and isinstance(e.value, list | tuple):
            raise OptionTypeError(f'option "{e.field}" must be of an array of strings') from e
        raise OptionTypeError(f'option "{e.field}" must be of type {go_type}') from e
    trained = _gguf_facts(record.gguf_path).context_length
    if 0 < trained < opts.num_ctx:  # lowered to the training context when scheduled (§2.4)
        opts = dataclasses.replace(opts, num_ctx=trained)
    return opts


class OptionTypeError(ServerError):
    """An option of the wrong JSON type: Ollama answers 500 (spec §2.3)."""


# engine/options.py's `allowed` texts for type errors -> the Go type Ollama names.
_OPTION_TYPES = {
    "an integer": "integer",
    "a float32 number": "float32",
    "a boolean": "boolean",
    "an array of strings": "array",
}


# --------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Job:
    """One prepared generation: prompt tokens, options and how to turn steps into events."""

    name: str  # the request's `model`, echoed in every event
    kind: str  # "generate" or "chat"
    scheduler: Scheduler
    runner: Runner
    prompt_text: str
    prompt_ids: list[int]
    opts: Options
    arrived_ns: int
    load_ns: int
    stream: bool
    logprobs: bool = False
    top_logprobs: int = 0
    trace: bool = False
    shift: bool = True
    truncate: bool = True
    grammar: str | None = None
    output: ChatOutputParser = field(default_factory=ChatOutputParser)
    return_context: bool = False  # generate without raw
    has_tools: bool = False
    single: bool = False  # _debug_render_only: one object, never streamed
    debug_info: dict[str, Any] | None = None
    # Chat with thinking and `format` (spec §8.4): re-renders the prompt with the thinking done
    # so far, returning (prompt text, token ids); `answer_output` parses the second run.
    rethink: Callable[[str], tuple[str, list[int]]] | None = None
    answer_output: ChatOutputParser = field(default_factory=ChatOutputParser)
    _released: bool = False

    def __post_init__(self) -> None:
        self.events: Generator[dict[str, Any], None, None] = self._events()

    def close(self) -> None:
        """End generation (if running) and release the model; safe to call more than once."""
        self.events.close()
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.scheduler.release(self.runner)

    def _events(self) -> Generator[dict[str, Any], None, None]:
        """The response events: text pieces, then the final one (or one debug object)."""
        try:
            if self.debug_info is not None:
                yield self._event("", done=False, debug_info=self.debug_info)
                return
            yield from self._generate()
        finally:
            self.release()

    def _steps(self, ids: list[int], grammar: str | None) -> Iterator[Step]:
        """engine.generate on a slot of this runner, one step per call under the runner lock."""
        model = self.runner.model
        constraint = None
        if grammar is not None:
            constraint = GrammarConstraint(grammar, trie_for(model.tokenizer))
        slot = self.runner.take_slot(ids)
        steps = generate(
            model,
            ids,
            self.opts,
            constraint=constraint,
            slot=slot,
            truncate=self.truncate,
            shift=self.shift,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            trace=self.trace,
            load_duration=self.load_ns,
            t_start=self.arrived_ns,
        )
        try:
            while True:
                with self.runner.lock:
                    step = next(steps, None)
                if step is None:
                    return
                yield step
        finally:
            steps.close()
            self.runner.give_slot(slot)

    def _generate(self) -> Iterator[dict[str, Any]]:
        emitted = False
        try:
            ids, grammar = self.prompt_ids, self.grammar
            if self.rethink is not None and grammar is not None:
                # Spec §8.4: think without the grammar; at the first answer text, stop, add the
                # thinking as an assistant message, re-render and answer under the grammar.
                thought: list[str] = []
                for step in self._steps(ids, None):
                    delta = self.output.add(step.text, done=step.done)
                    if delta.content:
                        break  # this first answer piece is not sent
                    thought.append(delta.thinking)
                    event = self._step_event(step, delta, "")
                    if event is not None:
                        yield event
                        emitted = True
                    if step.done:
                        return
                self.prompt_text, ids = self.rethink("".join(thought))
                self.output = self.answer_output
            pieces: list[str] = []
            for step in self._steps(ids, grammar):
                pieces.append(step.text)
                delta = self.output.add(step.text, done=step.done)
                event = self._step_event(step, delta, "".join(pieces))
                if event is not None:
                    yield event
                    emitted = True
        except EngineError as e:
            if not emitted or not self.stream:
                raise
            log.warning("generation failed after streaming began: %s", e)
            yield {"error": str(e)}

    def _step_event(self, step: Step, delta: Delta, generated: str) -> dict[str, Any] | None:
        """The event for one step: the final one, or a piece (None when nothing to send)."""
        lp = self._logprobs(step)
        tr = self._trace(step)
        if step.done:
            return self._final(step, delta, lp, tr, generated)
        if delta.content or delta.thinking or delta.tool_calls or lp or tr:
            return self._event(
                delta.content,
                thinking=delta.thinking,
                tool_calls=delta.tool_calls,
                logprobs=lp,
                trace=tr,
            )
        return None

    def _logprobs(self, step: Step) -> list[dict[str, Any]] | None:
        if step.logprobs is None:
            return None
        piece = self.runner.model.tokenizer.token_bytes
        tl = step.logprobs
        top = [(piece(t), lp) for t, lp in tl.top]
        return [logprob_entry(piece(tl.token), tl.logprob, top)]

    def _trace(self, step: Step) -> list[dict[str, Any]] | None:
        if step.trace is None:
            return None
        return [trace_json(step.trace, self.runner.model.tokenizer.token_bytes)]

    def _event(
        self,
        text: str,
        *,
        thinking: str = "",
        tool_calls: list[ToolCall] | None = None,
        done: bool = False,
        done_reason: str = "",
        context: list[int] | None = None,
        metrics: Metrics | None = None,
        logprobs: list[dict[str, Any]] | None = None,
        trace: list[dict[str, Any]] | None = None,
        debug_info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.kind == "generate":
            return generate_event(
                self.name, text, thinking=thinking, done=done, done_reason=done_reason,
                context=context, metrics=metrics, debug_info=debug_info, logprobs=logprobs,
                trace=trace,
            )  # fmt: skip
        calls = [c.to_json() for c in tool_calls or []]
        return chat_event(
            self.name, text, thinking=thinking, tool_calls=calls, done=done,
            done_reason=done_reason, metrics=metrics, debug_info=debug_info, logprobs=logprobs,
            trace=trace, role="" if debug_info is not None else "assistant",
        )  # fmt: skip

    def _final(
        self,
        step: Step,
        delta: Delta,
        lp: list[dict[str, Any]] | None,
        tr: list[dict[str, Any]] | None,
        generated: str,
    ) -> dict[str, Any]:
        stats = step.stats
        assert stats is not None  # the last step always carries them
        metrics = Metrics(
            total_duration=stats.total_duration,
            load_duration=stats.load_duration,
            prompt_eval_count=stats.prompt_eval_count,
            prompt_eval_duration=stats.prompt_eval_duration,
            eval_count=stats.eval_count,
            eval_duration=stats.eval_duration,
        )
        context = None
        if self.return_context:
            context = self.runner.model.tokenizer.encode(
                self.prompt_text + generated, add_special=False, parse_special=True
            )
        return self._event(
            delta.content,
            thinking=delta.thinking,
            tool_calls=delta.tool_calls,
            done=True,
            done_reason=step.done_reason or "stop",
            context=context,
            metrics=metrics,
            logprobs=lp,
            trace=tr,
        )

    def combine(self) -> dict[str, Any]:
        """The `stream: false` answer: the last event with text fields concatenated (§1.6)."""
        texts: dict[str, list[str]] = {"text": [], "thinking": []}
        logprobs: list[dict[str, Any]] = []
        traces: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        last: dict[str, Any] = {}
        for event in self.events:
            body = event.get("message", event)
            texts["text"].append(body.get("content", body.get("response", "")))
            texts["thinking"].append(body.get("thinking", ""))
            calls.extend(body.get("tool_calls", []))
            logprobs.extend(event.get("logprobs", []))
            traces.extend(event.get("trace", []))
            last = event
        if self.kind == "generate":
            last["response"] = "".join(texts["text"])
            body = last
        else:
            body = last["message"]
            body["content"] = "".join(texts["text"])
            if calls and self.has_tools:
                body["tool_calls"] = calls
        thinking = "".join(texts["thinking"])
        if thinking:
            body["thinking"] = thinking
        if logprobs:
            last["logprobs"] = logprobs
        if traces:
            last["trace"] = traces
        return _reorder(last, self.kind)


_GENERATE_ORDER = ("model", "created_at", "response", "thinking", "done", "done_reason",
                   "context", "total_duration", "load_duration", "prompt_eval_count",
                   "prompt_eval_duration", "eval_count", "eval_duration", "_debug_info",
                   "logprobs", "trace")  # fmt: skip
_CHAT_ORDER = ("model", "created_at", "message", "done", "done_reason", "_debug_info",
               "logprobs", "total_duration", "load_duration", "prompt_eval_count",
               "prompt_eval_duration", "eval_count", "eval_duration", "trace")  # fmt: skip
_MESSAGE_ORDER = ("role", "content", "thinking", "images", "tool_calls")


def _reorder(event: dict[str, Any], kind: str) -> dict[str, Any]:
    order = _GENERATE_ORDER if kind == "generate" else _CHAT_ORDER
    out = {k: event[k] for k in order if k in event}
    if "message" in out:
        out["message"] = {k: out["message"][k] for k in _MESSAGE_ORDER if k in out["message"]}
    return out


def trace_json(trace: SampleTrace, piece: Callable[[int], bytes]) -> dict[str, Any]:
    """refllama's `trace` extension: each sampler stage's survivors, the draws, the pick.

    Per stage (in chain order, then "grammar" and the resample's stages if the grammar
    rejected the first pick): its name, how many candidates survive, and the first few of them
    with logit and a float64 softmax over the survivors (display only).
    """

    def text(t: int) -> str:
        return piece(t).decode("utf-8", errors="replace")

    return {
        "token": trace.token,
        "piece": text(trace.token),
        "prob": trace.prob,
        "draws": list(trace.draws),
        "resampled": trace.resampled,
        "stages": [
            {
                "name": s.name,
                "size": s.size,
                "top": [{"id": i, "piece": text(i), "logit": lg, "prob": p} for i, lg, p in s.top],
            }
            for s in trace.stages
        ],
    }


# --------------------------------------------------------------------------------------------
# Preparing generate and chat


async def _acquire(
    scheduler: Scheduler,
    record: ModelRecord,
    opts: Options,
    keep_alive: float | None,
    arrived: int | None = None,
) -> tuple[Runner, int]:
    """The runner, and the load duration: request arrival (monotonic ns) to model ready."""
    start = time.monotonic_ns() if arrived is None else arrived
    runner = await scheduler.acquire(record, opts.num_ctx, keep_alive)
    return runner, time.monotonic_ns() - start


def _count_tokens(runner: Runner) -> Callable[[str], int]:
    def count(text: str) -> int:
        return len(runner.model.tokenize(text, add_special=False, parse_special=True))

    return count


def _tokenize_prompt(
    runner: Runner, text: str, opts: Options, truncate: bool, shift: bool
) -> list[int]:
    """The prompt as the runner tokenizes it: BOS added per the model, special text parsed.

    A rendered prompt that already starts with the BOS text (Jinja templates print
    `bos_token`) loses that copy, as Ollama strips it to avoid a double BOS (sampling.md §6.7).
    Over-long prompts are rejected here with Ollama's texts when truncation or shifting is off
    (spec §4.6); otherwise engine/generate.py truncates them as Ollama does.
    """
    tok = runner.model.tokenizer
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
    override = GoTemplate(req.template) if req.template else None
    fmt = check_format(req.format)
    opts = request_options(record, req.options)
    runner, load_ns = await _acquire(scheduler, record, opts, req.keep_alive, arrived)
    if not req.prompt:
        scheduler.release(runner)
        return None
    try:
        prompt = await anyio.to_thread.run_sync(
            _render_generate, runner, record, template, override, req, think, opts
        )
        ids = []  # _debug_render_only stops after rendering (spec §4.2 step 13)
        if not req.debug_render_only:
            ids = await anyio.to_thread.run_sync(
                _tokenize_prompt, runner, prompt, opts, req.truncate, req.shift
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
        single=req.debug_render_only,
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
        parser = ToolCallParser(template.tool_tag, names)
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
    fmt = check_format(req.format)
    opts = request_options(record, req.options)
    runner, load_ns = await _acquire(scheduler, record, opts, req.keep_alive, arrived)
    if not req.messages:
        scheduler.release(runner)
        return None
    try:
        messages = chat_messages(
            [_message(m) for m in req.messages],
            model_system=record.system or "",
            model_messages=[_message(m) for m in record.messages],
        )

        def render(msgs: list[Message]) -> RenderedPrompt:
            return render_chat(
                template,
                msgs,
                tools=list(req.tools) or None,
                think=think,
                num_ctx=opts.num_ctx,
                count_tokens=_count_tokens(runner),
                truncate=req.truncate,
            )

        rendered = await anyio.to_thread.run_sync(render, messages)
        ids = []  # _debug_render_only stops after rendering (spec §5.2 step 11)
        if not req.debug_render_only:
            ids = await anyio.to_thread.run_sync(
                _tokenize_prompt, runner, rendered.prompt, opts, req.truncate, req.shift
            )
        grammar = grammar_for_format(fmt, chat=True)
    except BaseException:
        scheduler.release(runner)
        raise
    output = _output_parser(template, rendered.prompt, think, req.tools)
    rethink = None
    if grammar is not None and output.thinking is not None:

        def rethink(thought: str) -> tuple[str, list[int]]:
            prompt = render([*messages, Message("assistant", thinking=thought)]).prompt
            return prompt, _tokenize_prompt(runner, prompt, opts, req.truncate, req.shift)

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
        single=req.debug_render_only,
        debug_info=_debug_info(rendered.prompt, rendered.images) if req.debug_render_only else None,
        rethink=rethink,
        answer_output=ChatOutputParser(
            thinking=output.thinking, tools=_output_parser(template, "", False, req.tools).tools
        ),
    )


# --------------------------------------------------------------------------------------------
# Embeddings (spec §10)


async def embed(
    record: ModelRecord, req: EmbedRequest, scheduler: Scheduler, arrived: int
) -> dict[str, Any]:
    opts = request_options(record, req.options)
    runner, load_ns = await _acquire(scheduler, record, opts, req.keep_alive, arrived)
    try:
        if not req.input:
            return {"model": req.model, "embeddings": []}
        vectors, count = await anyio.to_thread.run_sync(_embed_all, runner, req, opts)
    finally:
        scheduler.release(runner)
    body: dict[str, Any] = {"model": req.model, "embeddings": vectors}
    metrics = Metrics(
        total_duration=time.monotonic_ns() - arrived,
        load_duration=load_ns,
        prompt_eval_count=count,
    )
    body.update(metrics.fields())
    return body


def _embed_all(runner: Runner, req: EmbedRequest, opts: Options) -> tuple[list[list[float]], int]:
    """Spec §10.1 step 7 for every input, in order; returns the vectors and the token total."""
    model, tok = runner.model, runner.model.tokenizer
    pooling = _gguf_facts(runner.record.gguf_path).pooling_type
    ctx = min(opts.num_ctx, model.config.n_ctx_train)
    vectors, total = [], 0
    for text in req.input:
        ids = tok.encode(text, add_special=False, parse_special=False)
        limit = ctx - int(not ids or ids[0] != tok.bos_id) - int(not ids or ids[-1] != tok.eos_id)
        if limit <= 0:
            raise InvalidRequest("input after truncation exceeds maximum context length")
        if len(ids) > limit:
            if not req.truncate:
                raise InvalidRequest("the input length exceeds the context length")
            text = tok.decode(ids[:limit])
        ids = tok.encode(text, add_special=True, parse_special=False)
        with runner.lock:
            hidden = model.embed(ids)  # (T, D)
        vector = normalize(pool(hidden, pooling))
        if 0 < req.dimensions < vector.size:
            vector = normalize(vector[: req.dimensions])
        vectors.append(float32_list(vector))
        total += len(ids)
    return vectors, total


def pool(hidden: npt.NDArray[np.float32], pooling_type: int) -> npt.NDArray[np.float32]:
    """(T, D) -> (D,) by the GGUF's `{arch}.pooling_type`: 1 mean, 2 cls (first token),
    3 last. A generative model has none (0); like Ollama's own runner it then returns the
    last token's hidden state."""
    if pooling_type == 1:
        return hidden.mean(axis=0, dtype=np.float32)
    if pooling_type == 2:
        return hidden[0]
    return hidden[-1]


def normalize(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """v / max(||v||_2, 1e-12) in float32 (spec §10.1 step 7.8); NaN or Inf is an error."""
    if not np.isfinite(v).all():
        raise InvalidRequest("embedding contains NaN or Inf values")
    norm = max(float(np.linalg.norm(v.astype(np.float64))), 1e-12)
    return (v / np.float32(norm)).astype(np.float32)


async def embeddings(
    record: ModelRecord, req: EmbeddingsRequest, scheduler: Scheduler
) -> dict[str, Any]:
    """Legacy /api/embeddings: one raw pooled vector as float64, no normalisation (§10.2)."""
    opts = request_options(record, req.options)
    runner, _ = await _acquire(scheduler, record, opts, req.keep_alive)
    try:
        if not req.prompt:
            return {"embedding": []}
        vector = await anyio.to_thread.run_sync(_embed_one, runner, req.prompt)
    finally:
        scheduler.release(runner)
    return {"embedding": vector.astype(np.float64).tolist()}


def _embed_one(runner: Runner, text: str) -> npt.NDArray[np.float32]:
    tok = runner.model.tokenizer
    ids = tok.encode(text, add_special=True, parse_special=False)
    with runner.lock:
        hidden = runner.model.embed(ids)  # (T, D)
    return pool(hidden, _gguf_facts(runner.record.gguf_path).pooling_type)


# --------------------------------------------------------------------------------------------
# Tokenize / detokenize (refllama extensions, llama-server's shapes)


async def tokenize(
    record: ModelRecord, req: TokenizeRequest, scheduler: Scheduler
) -> dict[str, Any]:
    opts = request_options(record, {})
    runner, _ = await _acquire(scheduler, record, opts, None)
    try:
        model = runner.model
        ids = [
            int(t)
            for t in model.tokenize(
                req.content, add_special=req.add_special, parse_special=req.parse_special
            )
        ]
        if not req.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": t, "piece": _piece(model.tokenizer.token_bytes(t))} for t in ids]}
    finally:
        scheduler.release(runner)


def _piece(raw: bytes) -> str | list[int]:
    """llama-server's `with_pieces`: the text when it is valid UTF-8, else the byte values."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


async def detokenize(
    record: ModelRecord, req: DetokenizeRequest, scheduler: Scheduler
) -> dict[str, Any]:
    opts = request_options(record, {})
    runner, _ = await _acquire(scheduler, record, opts, None)
    try:
        vocab = runner.model.tokenizer.n_vocab
        bad = [t for t in req.tokens if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is out of range [0, {vocab})")
        return {"content": runner.model.detokenize(req.tokens)}
    finally:
        scheduler.release(runner)
