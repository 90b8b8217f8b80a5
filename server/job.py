"""A prepared generation and the events it produces (spec/ollama-api.md §1.6, §4.4-§4.6, §5.3,
§7.6, §8.4).

`Job.events` is a plain generator of event dicts: one per text piece (after the thinking split
and tool-call parsing), then the final one with done_reason, context and the counts and
durations. The app streams it from a worker thread, or folds it with `Job.combine` for
`stream: false`. Each engine step runs under the runner's lock, so concurrent requests
interleave token by token while every sequence keeps its own slot and RNG.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from engine.chat.tools import ChatOutputParser, Delta, ToolCall
from engine.errors import Cancelled, EngineError
from engine.generate import Step, generate
from engine.grammar.constraint import GrammarConstraint, trie_for
from engine.sampling.chain import SampleTrace, dist_interval
from engine.sampling.options import Options
from server.batcher import BatchedModel
from server.events import Metrics, chat_event, generate_event, logprob_entry
from server.scheduler import Runner, Scheduler

log = logging.getLogger(__name__)


REPEAT_LIMIT = 30  # Ollama's llm/llama_server.go: abort after more than 30 repeats of a chunk


@dataclass
class RepeatGuard:
    """Ollama's token-repeat abort, on the pieces the runner streams (one per token, then an
    empty one at the end, as llama-server's SSE chunks).

    A piece repeats when its whitespace-stripped text equals the previous piece's (so "\n" and
    " " are the same piece); the count starts from an empty previous piece. When a piece makes
    the count exceed REPEAT_LIMIT, Ollama drops it and ends the completion without an error and
    without a final `done` chunk: the stream simply ends (a `stream: false` answer then has
    `done: false`).
    """

    last: str = ""
    repeats: int = 0

    def exceeded(self, piece: str) -> bool:
        text = piece.strip()
        if text == self.last:
            self.repeats += 1
        else:
            self.last, self.repeats = text, 0
        return self.repeats > REPEAT_LIMIT


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
    debug_info: dict[str, Any] | None = None  # _debug_render_only: answer this, generate nothing
    # Chat with thinking and `format` (spec §8.4): re-renders the prompt with the thinking done
    # so far, returning (prompt text, token ids); `answer_output` parses the second run.
    rethink: Callable[[str], tuple[str, list[int]]] | None = None
    answer_output: ChatOutputParser = field(default_factory=ChatOutputParser)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client went away
    _released: bool = False

    def __post_init__(self) -> None:
        self.events: Generator[dict[str, Any], None, None] = self._events()

    @property
    def single(self) -> bool:
        """One JSON object, never streamed: the _debug_render_only answer."""
        return self.debug_info is not None

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
        """engine.generate on a slot of this runner, its evaluations batched with the other
        sequences of the model; raises Cancelled once the client has gone."""
        model = self.runner.model
        constraint = None
        if grammar is not None:
            constraint = GrammarConstraint(grammar, trie_for(model.tokenizer))
        slot = self.runner.take_slot(ids)
        steps = generate(
            BatchedModel(model, self.runner.batcher),
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
            cancelled=self.cancelled.is_set,
        )
        try:
            with self.runner.batcher.sequence():
                while True:
                    if self.cancelled.is_set():
                        raise Cancelled("the client disconnected")
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
            guard = RepeatGuard()
            for step in self._steps(ids, grammar):
                if guard.exceeded(step.text):
                    log.info("prediction aborted, token repeat limit reached")
                    return
                pieces.append(step.text)
                if step.done and step.text:
                    # Ollama sends the last token as its own chunk; the final one is empty.
                    piece = replace(step, done=False, done_reason=None, stats=None)
                    event = self._step_event(piece, self.output.add(step.text), "")
                    if event is not None:
                        yield event
                        emitted = True
                    if guard.exceeded(""):
                        log.info("prediction aborted, token repeat limit reached")
                        return
                    step = replace(step, text="", logprobs=None, trace=None)
                delta = self.output.add(step.text, done=step.done)
                event = self._step_event(step, delta, "".join(pieces))
                if event is not None:
                    yield event
                    emitted = True
        except EngineError as e:
            if isinstance(e, Cancelled) or not emitted or not self.stream:
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
        if not last:  # the repeat guard ended generation before any piece was sent
            last = self._event("")
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
    with logit and a float64 softmax over the survivors (display only). `rejected` is that
    first pick. `dist` places the chosen token in the array dist drew from: its index, its
    rank by logit (1 = best), and its interval [start, end] of the cumulative distribution
    (array order), which holds the last draw.
    """

    def text(t: int) -> str:
        return piece(t).decode("utf-8", errors="replace")

    final = trace.final
    start, end = dist_interval(final, trace.index)
    rejected = trace.rejected
    return {
        "token": trace.token,
        "piece": text(trace.token),
        "prob": trace.prob,
        "draws": list(trace.draws),
        "resampled": trace.resampled,
        "rejected": None if rejected is None else {"id": rejected, "piece": text(rejected)},
        "dist": {
            "size": final.size,
            "sorted": final.sorted,
            "index": trace.index,
            "rank": 1 + int((final.logits > final.logits[trace.index]).sum()),
            "start": start,
            "end": end,
        },
        "stages": [
            {
                "name": s.name,
                "size": s.size,
                "top": [{"id": i, "piece": text(i), "logit": lg, "prob": p} for i, lg, p in s.top],
            }
            for s in trace.stages
        ],
    }
