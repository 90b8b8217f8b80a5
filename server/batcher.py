"""Continuous batching: the evaluations of every in-flight sequence of one model run as one forward.

Each request's `engine.generate.generate` (unchanged) gets a `BatchedModel`: the runner's engine
model whose `eval` hands its (tokens, cache) to the runner's `Batcher` and waits for the logits.
The batcher's thread gathers what the active sequences submit (a decode token, or one num_batch
chunk of a new prompt) and runs it as one `Model.eval_many`. Rows are batch-invariant
(engine/models/decoder.py), so a request's bytes never depend on what else ran or in which
order requests arrived; each sequence keeps its own KV cache, sampler and RNG.

Nothing can wait forever: every submitted piece of work is finished with logits or an error,
a failure in a shared step is retried per sequence so it lands only on the sequence that caused
it, a cancelled sequence's work is dropped before the step (and a step whose sequences are all
cancelled stops between layers), and closing the batcher fails whatever is still pending.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.errors import Cancelled

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

# How long a step waits for the other active sequences to submit (they sample, then send their
# event, between two steps) before it runs with what it has. A step never waits when every
# active sequence has submitted, so a lone sequence never waits at all.
GATHER_SECONDS = 0.02


class BatcherClosed(RuntimeError):
    """The model was unloaded while a sequence still wanted to evaluate."""


@dataclass(eq=False)
class _Work:
    """One sequence's next rows: its new tokens and the cache they extend."""

    tokens: Sequence[int]
    cache: Any
    cancelled: Callable[[], bool] | None
    done: threading.Event = field(default_factory=threading.Event)
    logits: Array | None = None  # (1, V)
    error: BaseException | None = None

    def is_cancelled(self) -> bool:
        return self.cancelled is not None and self.cancelled()

    def finish(self, logits: Array) -> None:
        self.logits = logits
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class Batcher:
    """Runs the pending evaluations of one model's sequences as one `eval_many` per step."""

    def __init__(self, model: Any, gather_seconds: float = GATHER_SECONDS) -> None:
        self.model = model
        self.gather_seconds = gather_seconds
        self._cond = threading.Condition()
        self._pending: list[_Work] = []
        self._active = 0  # sequences inside generate: each will submit again
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # forwards run (a multi-sequence step counts once)

    @contextlib.contextmanager
    def sequence(self) -> Iterator[None]:
        """Count a sequence as active while it generates, so steps wait for its work."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def run(self, tokens: Sequence[int], cache: Any, cancelled: Callable[[], bool] | None) -> Array:
        """Evaluate `tokens` into `cache` in the next step; the last row's logits (1, V).

        Raises what the evaluation raised for this sequence, Cancelled once `cancelled()` is
        true before or during its step, or BatcherClosed after `close`.
        """
        work = _Work(tokens, cache, cancelled)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the model was unloaded")
            self._pending.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        work.done.wait()
        if work.error is not None:
            raise work.error
        assert work.logits is not None
        return work.logits

    def close(self) -> None:
        """Stop the thread after the step in progress; pending work fails with BatcherClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for work in self._pending:
                        work.fail(BatcherClosed("the model was unloaded"))
                    self._pending = []
                    self._thread = None
                    return
                deadline = time.monotonic() + self.gather_seconds
                while len(self._pending) < self._active and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, self._pending = self._pending, []
            try:
                self._step(batch)
            except BaseException as e:  # never leave a waiter behind, whatever happened
                for work in batch:
                    if not work.done.is_set():
                        work.fail(e)
                if not isinstance(e, Exception):
                    raise

    def _step(self, batch: list[_Work]) -> None:
        live = []
        for work in batch:
            if work.is_cancelled():
                work.fail(Cancelled("evaluation cancelled"))
            else:
                live.append(work)
        if not live:
            return

        def all_cancelled() -> bool:
            return all(work.is_cancelled() for work in live)

        self.steps += 1
        try:
            logits = self.model.eval_many(
                [(work.tokens, work.cache) for work in live], cancelled=all_cancelled
            )
        except Exception as e:
            if len(live) == 1 or isinstance(e, Cancelled):
                for work in live:
                    work.fail(e)
                return
            # A failed forward wrote no rows (caches append only at its end): rerun each
            # sequence alone, so the error reaches only the sequence it belongs to.
            for work in live:
                self._step([work])
            return
        for work, row in zip(live, logits, strict=True):
            work.finish(row)


class BatchedModel:
    """An engine model as one sequence sees it: `eval` goes through the runner's batcher.

    Everything else (tokenizer, new_cache, config, ...) is the engine model's own.
    """

    def __init__(self, model: Any, batcher: Batcher) -> None:
        self._model = model
        self._batcher = batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def eval(
        self,
        tokens: Sequence[int],
        cache: Any,
        num_batch: int,
        last_only: bool = False,
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """`Model.eval` with last_only: logits (1, V) of the last token, chunks of num_batch
        each in its own step. ContextOverflow before anything runs when they do not fit."""
        if not last_only:
            raise ValueError("a batched eval gives only the last token's logits (last_only)")
        if num_batch < 1:
            raise ValueError(f"num_batch must be >= 1, got {num_batch}")
        tokens = list(tokens)
        if tokens and max(tokens) >= self._model.n_vocab:
            # Image rows (engine/models/multimodal.py) go through the vision model's own eval,
            # in one call so an image is never split, beside the batcher: the weights are
            # read-only and this sequence's cache is its own, so its bytes are the same.
            return self._model.eval(tokens, cache, num_batch, True, cancelled=cancelled)
        cache.reserve(len(tokens))
        logits = None
        for start in range(0, max(len(tokens), 1), num_batch):
            if cancelled is not None and cancelled():
                raise Cancelled("evaluation cancelled")
            logits = self._batcher.run(tokens[start : start + num_batch], cache, cancelled)
        assert logits is not None
        return logits
