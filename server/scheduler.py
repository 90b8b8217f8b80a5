"""Loaded models: load once, keep for `keep_alive`, unload, and share safely between requests.

Ollama semantics (spec/ollama-api.md §3.2, §11.9): a model stays loaded for its session duration
(the request's `keep_alive`, else OLLAMA_KEEP_ALIVE, default 5m); a request without `keep_alive`
leaves the duration unchanged; the idle timer starts when the last in-flight request finishes;
duration 0 unloads as soon as the model is idle; a different `num_ctx` reloads it.

Concurrency: every request gets its own KV cache (taken from the runner's pool of free caches,
so a finished sequence's cache is reused, with its prefix, by the next request), and each engine
call runs under the runner's `lock`. Requests therefore interleave token by token, while each
sequence only ever sees its own cache and its own RNG: its output is the same bytes whatever
else runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from engine.generate import Slot
from engine.gguf.reader import GGUFFile
from engine.models.multimodal import VisionLanguageModel
from engine.models.vision import load_projector
from server.errors import ServerError
from server.schemas import FOREVER, parse_keep_alive
from server.store import ModelRecord

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's 5m
DEFAULT_MAX_QUEUE = 512


class ServerBusy(ServerError):
    status_code = 503

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


def _with_projector(model: Any, record: ModelRecord) -> Any:
    """The text model plus the record's projector layer (engine/models/multimodal.py), or bare."""
    base = model.model if isinstance(model, VisionLanguageModel) else model
    if not record.projectors:
        return base
    if isinstance(model, VisionLanguageModel) and model.encoder.path == record.projectors[0]:
        return model
    return VisionLanguageModel(base, load_projector(record.projectors[0]))


@dataclass(eq=False)
class Runner:
    """One loaded model instance."""

    record: ModelRecord
    model: Any  # engine Model: tokenize/detokenize/new_cache/eval/embed
    num_ctx: int
    keep_alive: float  # session duration, seconds; FOREVER never unloads
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    expires_at: float = 0.0  # wall clock; meaningful when idle
    retired: bool = False  # replaced (num_ctx changed) or asked to unload: drop when idle
    free_slots: list[Slot] = field(default_factory=list)
    # Guards free_slots only, so /api/ps never waits for an engine step (which holds `lock`).
    slots_lock: threading.Lock = field(default_factory=threading.Lock)
    # Read once at load: the GGUF may be deleted while the model stays loaded (its weights
    # are in memory), and /api/ps must still answer.
    weight_bytes: int = 0

    def __post_init__(self) -> None:
        self.weight_bytes = _float32_weight_bytes(self.record.gguf_path)

    @property
    def key(self) -> str:
        return self.record.parsed.full.lower()

    def take_slot(self, prompt: list[int]) -> Slot:
        """The free slot sharing the longest prefix with `prompt` (llama-server's cache_prompt
        slot choice), or a new one."""
        with self.slots_lock:
            if self.free_slots:
                best = max(self.free_slots, key=lambda s: _common_prefix(s.tokens, prompt))
                self.free_slots.remove(best)
                return best
        return Slot.new(self.model, self.num_ctx)

    def give_slot(self, slot: Slot) -> None:
        with self.slots_lock:
            self.free_slots.append(slot)

    def size(self) -> int:
        """Bytes held: the weights as float32 (the engine dequantizes at load) plus the KV
        caches of the free slots and of the requests in flight (each has one)."""
        with self.slots_lock:
            caches = [s.cache.k.nbytes + s.cache.v.nbytes for s in self.free_slots]
        per_cache = max(caches, default=0)
        return self.weight_bytes + sum(caches) + self.in_flight * per_cache

    def ps_expiry(self, now: float) -> float:
        """`expires_at` for /api/ps: while busy, now + duration (spec §3.2)."""
        if self.in_flight:
            return now + self.keep_alive
        return self.expires_at


class Scheduler:
    """Owns every loaded runner. Thread-safe: requests release runners from worker threads."""

    def __init__(
        self,
        load: Callable[[Path], Any],
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self._load = load
        self.default_keep_alive = default_keep_alive
        self.max_queue = max_queue
        self._runners: dict[str, Runner] = {}
        self._state = threading.Lock()
        self._load_lock = anyio.Lock()
        self._pending = 0

    @classmethod
    def from_env(cls, load: Callable[[Path], Any]) -> Scheduler:
        keep = parse_keep_alive(_env_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE", "")))
        max_queue = int(os.environ.get("OLLAMA_MAX_QUEUE") or DEFAULT_MAX_QUEUE)
        return cls(load, DEFAULT_KEEP_ALIVE if keep is None else keep, max_queue)

    async def acquire(self, record: ModelRecord, num_ctx: int, keep_alive: float | None) -> Runner:
        """The loaded runner for `record` with one more request in flight; loads if needed."""
        with self._state:
            if self._pending >= self.max_queue:
                raise ServerBusy()
            self._pending += 1
        try:
            async with self._load_lock:
                model = self._shared_model(record.gguf_path)  # before _ready may drop it
                runner = self._ready(record, num_ctx)
                if runner is None:
                    if model is None:
                        model = await anyio.to_thread.run_sync(self._load, record.gguf_path)
                    model = await anyio.to_thread.run_sync(_with_projector, model, record)
                    runner = Runner(record, model, num_ctx, self.default_keep_alive)
                    with self._state:
                        old = self._runners.get(runner.key)
                        if old is not None:
                            old.retired = True
                        self._runners[runner.key] = runner
                with self._state:
                    if keep_alive is not None:
                        runner.keep_alive = keep_alive
                    runner.in_flight += 1
                    return runner
        finally:
            with self._state:
                self._pending -= 1

    def _shared_model(self, path: Path) -> Any:
        """A loaded engine model for the same GGUF blob, if a runner holds one.

        Runners built from one GGUF (the same weights under several templates, or the same
        model reloaded for another num_ctx) share the read-only weights; each runner still has
        its own slots, lock and keep_alive. So a "reload" costs no second weight load.
        """
        with self._state:
            for runner in self._runners.values():
                if runner.record.gguf_path == path:
                    return runner.model
        return None

    def _ready(self, record: ModelRecord, num_ctx: int) -> Runner | None:
        with self._state:
            runner = self._runners.get(record.parsed.full.lower())
            if runner is None or runner.retired:
                return None
            if runner.num_ctx != num_ctx or runner.record.digest != record.digest:
                # Runner options or the model itself changed: reload (spec §2.4 "Reloads").
                runner.retired = True
                if not runner.in_flight:
                    del self._runners[runner.key]
                return None
            return runner

    def release(self, runner: Runner) -> None:
        """One request on `runner` finished; start its idle timer or unload it."""
        with self._state:
            runner.in_flight -= 1
            if runner.in_flight:
                return
            runner.expires_at = time.time() + runner.keep_alive
            if runner.retired or runner.keep_alive <= 0:
                self._drop(runner)

    def unload(self, record: ModelRecord) -> None:
        """Unload now, or as soon as in-flight requests finish (spec §3.3)."""
        self.unload_name(record.parsed.full)

    def unload_name(self, full_name: str) -> bool:
        """`unload` by the model's full name; False when no such model is loaded."""
        with self._state:
            runner = self._runners.get(full_name.lower())
            if runner is None:
                return False
            runner.keep_alive = 0.0
            if not runner.in_flight:
                self._drop(runner)
            return True

    def _drop(self, runner: Runner) -> None:
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
            log.info("unloaded %s", runner.record.name)

    def purge_expired(self) -> None:
        now = time.time()
        with self._state:
            for runner in list(self._runners.values()):
                if (
                    not runner.in_flight
                    and runner.keep_alive != FOREVER
                    and runner.expires_at <= now
                ):
                    self._drop(runner)

    def loaded(self) -> list[Runner]:
        """Loaded runners, latest expiry first (the /api/ps order)."""
        self.purge_expired()
        now = time.time()
        with self._state:
            runners = list(self._runners.values())
        return sorted(runners, key=lambda r: r.ps_expiry(now), reverse=True)


def _float32_weight_bytes(path: Path) -> int:
    return 4 * sum(t.n_elements for t in GGUFFile(path).tensors.values())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _env_keep_alive(text: str) -> str | float | None:
    """OLLAMA_KEEP_ALIVE accepts a duration string or integer seconds (spec §1.1)."""
    if not text:
        return None
    try:
        return float(int(text))
    except ValueError:
        return text
