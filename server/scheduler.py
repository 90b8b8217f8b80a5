"""Loaded models: load once, keep for `keep_alive`, unload, share between requests, batch them.

Ollama semantics (spec/ollama-api.md §1.1, §3.2, §11.9; Ollama's server/sched.go): a model stays
loaded for its session duration (the request's `keep_alive`, else OLLAMA_KEEP_ALIVE, default 5m);
a request without `keep_alive` leaves the duration unchanged; the idle timer starts when the last
in-flight request finishes; duration 0 unloads as soon as the model is idle; a different
`num_ctx` reloads it.

Limits, as Ollama's scheduler applies them: at most OLLAMA_NUM_PARALLEL requests (default 1) run
on one model at a time, later ones wait; at most OLLAMA_MAX_QUEUE requests (default 512) wait,
past that the answer is 503; at most OLLAMA_MAX_LOADED_MODELS models stay loaded (0: 3, Ollama's
CPU default). Loading one more model, or one that does not fit the memory budget next to the
loaded ones, unloads idle models first, the shortest session duration first (then by name); when
the count is full and none is idle it waits for one, and when the memory cannot be found it
answers ModelTooLarge.

Every running request has its own slot (a KV cache kept with its tokens for prefix reuse, at most
NUM_PARALLEL per model, released on unload) and the model's `Batcher` runs all their evaluations
together (server/batcher.py), so each sequence gets the same bytes whatever else runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from engine.errors import EngineError, ModelTooLarge
from engine.generate import Slot
from engine.gguf.reader import GGUFFile
from engine.models import heap
from engine.models.config import ModelConfig
from engine.models.decoder import DEFAULT_MEMORY_FRACTION, available_memory, memory_needed
from engine.models.multimodal import VisionLanguageModel
from engine.models.vision import load_projector
from server.batcher import Batcher
from server.errors import ServerError
from server.schemas import FOREVER, parse_keep_alive
from server.store import ModelRecord

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's 5m
DEFAULT_MAX_QUEUE = 512
DEFAULT_NUM_PARALLEL = 1
DEFAULT_MAX_LOADED_MODELS = 3  # Ollama's defaultModelsPerGPU, used when there is no GPU


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
    """One loaded model instance: the engine model, its slots, its batcher, its session."""

    record: ModelRecord
    model: Any  # engine Model: tokenize/detokenize/new_cache/eval_many/embed
    num_ctx: int
    keep_alive: float  # session duration, seconds; FOREVER never unloads
    in_flight: int = 0
    expires_at: float = 0.0  # wall clock; meaningful when idle
    retired: bool = False  # replaced (num_ctx changed) or asked to unload: drop when idle
    free_slots: list[Slot] = field(default_factory=list)
    busy_slots: list[Slot] = field(default_factory=list)
    # Guards the slot lists only, so /api/ps never waits for an engine step.
    slots_lock: threading.Lock = field(default_factory=threading.Lock)
    # Measured once at load: the GGUF may be deleted while the model stays loaded, and /api/ps
    # must still answer.
    weight_bytes: int = 0
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.weight_bytes = array_bytes(self.model)
        self.batcher = Batcher(self.model)

    @property
    def key(self) -> str:
        return self.record.parsed.full.lower()

    def take_slot(self, prompt: list[int]) -> Slot:
        """The free slot sharing the longest prefix with `prompt` (llama-server's cache_prompt
        slot choice), or a new one."""
        with self.slots_lock:
            if self.free_slots:
                slot = max(self.free_slots, key=lambda s: _common_prefix(s.tokens, prompt))
                self.free_slots.remove(slot)
            else:
                slot = Slot.new(self.model, self.num_ctx)
            self.busy_slots.append(slot)
            return slot

    def give_slot(self, slot: Slot) -> None:
        with self.slots_lock:
            self.busy_slots.remove(slot)
            self.free_slots.append(slot)

    def size(self) -> int:
        """Bytes held: the weight arrays plus every slot's KV cache as allocated now."""
        with self.slots_lock:
            slots = self.free_slots + self.busy_slots
        return self.weight_bytes + sum(s.cache.nbytes for s in slots)

    def ps_expiry(self, now: float) -> float:
        """`expires_at` for /api/ps: while busy, now + duration (spec §3.2)."""
        if self.in_flight:
            return now + self.keep_alive
        return self.expires_at

    def close(self) -> None:
        """Unloaded: stop the batcher and let the caches go."""
        self.batcher.close()
        with self.slots_lock:
            self.free_slots.clear()


class Scheduler:
    """Owns every loaded runner. Thread-safe: requests release runners from worker threads."""

    def __init__(
        self,
        load: Callable[[Path], Any],
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
        max_queue: int = DEFAULT_MAX_QUEUE,
        num_parallel: int = DEFAULT_NUM_PARALLEL,
        max_loaded_models: int = DEFAULT_MAX_LOADED_MODELS,
        memory_budget: int | None = None,
    ) -> None:
        """`memory_budget`: bytes all loaded models may hold together; None: what the machine
        has available (DEFAULT_MEMORY_FRACTION of MemAvailable) when a model loads."""
        if num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {num_parallel}")
        self._load = load
        self.default_keep_alive = default_keep_alive
        self.max_queue = max_queue
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.memory_budget = memory_budget
        self._runners: dict[str, Runner] = {}
        self._state = threading.Lock()
        self._load_lock = anyio.Lock()
        self._waiting = 0
        # Waiters sleep on `_changed`; release() (often in a worker thread) replaces and sets it
        # on the event loop, so a waiter that saw no room before awaiting cannot miss the wake.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        # Engine models of dropped runners, until they are garbage (see return_memory).
        self._unloaded: list[weakref.ref[Any]] = []

    @classmethod
    def from_env(cls, load: Callable[[Path], Any]) -> Scheduler:
        keep = parse_keep_alive(_env_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE", "")))
        return cls(
            load,
            DEFAULT_KEEP_ALIVE if keep is None else keep,
            max_queue=_env_int("OLLAMA_MAX_QUEUE", DEFAULT_MAX_QUEUE),
            num_parallel=_env_int("OLLAMA_NUM_PARALLEL", DEFAULT_NUM_PARALLEL) or 1,
            max_loaded_models=_env_int("OLLAMA_MAX_LOADED_MODELS", 0) or DEFAULT_MAX_LOADED_MODELS,
        )

    async def acquire(self, record: ModelRecord, num_ctx: int, keep_alive: float | None) -> Runner:
        """The loaded runner for `record` with one more request in flight; loads if needed and
        waits while NUM_PARALLEL requests already run on it. ServerBusy past MAX_QUEUE."""
        self._loop = asyncio.get_running_loop()
        with self._state:
            if self._waiting >= self.max_queue:
                raise ServerBusy()
            self._waiting += 1
        try:
            while True:
                changed = self._changed
                with self._state:
                    runner = self._ready(record, num_ctx)
                    if runner is not None and runner.in_flight < self.num_parallel:
                        if keep_alive is not None:
                            runner.keep_alive = keep_alive
                        runner.in_flight += 1
                        return runner
                if runner is None:
                    async with self._load_lock:
                        with self._state:
                            loaded = self._ready(record, num_ctx) is not None
                        if not loaded:
                            await self._load_runner(record, num_ctx)
                    continue
                await changed.wait()
        finally:
            with self._state:
                self._waiting -= 1

    async def _load_runner(self, record: ModelRecord, num_ctx: int) -> None:
        model = self._shared_model(record.gguf_path)
        needed = 0 if model is not None else _estimate(record.gguf_path, num_ctx)
        await self._make_room(record.parsed.full.lower(), needed)
        if model is None:
            model = await anyio.to_thread.run_sync(self._load, record.gguf_path)
        model = await anyio.to_thread.run_sync(_with_projector, model, record)
        runner = Runner(record, model, num_ctx, self.default_keep_alive)
        with self._state:
            old = self._runners.get(runner.key)
            if old is not None:
                old.retired = True
                if not old.in_flight:
                    old.close()
            self._runners[runner.key] = runner

    async def _make_room(self, key: str, needed: int) -> None:
        """Unload idle models until one more model (`needed` bytes) fits next to the others:
        Ollama's order (shortest session duration, then name). With MAX_LOADED_MODELS reached
        and none idle, wait for one to become idle; ModelTooLarge when memory cannot be found."""
        while True:
            changed = self._changed
            with self._state:
                others = [r for r in self._runners.values() if r.key != key]
                full = len(others) >= self.max_loaded_models
                fits = self._fits(needed, others)
                if not full and fits:
                    return
                idle = [r for r in others if not r.in_flight]
                if idle:
                    victim = min(idle, key=lambda r: (r.keep_alive, r.record.name))
                    log.info("unloading %s to make room", victim.record.name)
                    self._drop(victim)
                elif not fits:
                    raise ModelTooLarge(needed, self._budget(others))
            if idle:
                gc.collect()  # the unloaded weights are returned before memory is measured
            else:
                await changed.wait()

    def _budget(self, others: list[Runner]) -> int:
        if self.memory_budget is not None:
            return self.memory_budget - sum(r.size() for r in others)
        return int(available_memory() * DEFAULT_MEMORY_FRACTION)

    def _fits(self, needed: int, others: list[Runner]) -> bool:
        return needed <= self._budget(others)

    def _shared_model(self, path: Path) -> Any:
        """A loaded engine model for the same GGUF blob, if a runner holds one.

        Runners built from one GGUF (the same weights under several templates, or the same
        model reloaded for another num_ctx) share the read-only weights; each runner still has
        its own slots, batcher and keep_alive. So a "reload" costs no second weight load.
        """
        with self._state:
            for runner in self._runners.values():
                if runner.record.gguf_path == path:
                    return runner.model
        return None

    def _ready(self, record: ModelRecord, num_ctx: int) -> Runner | None:
        """The loaded runner for `record` (call with `_state` held); None when it must load."""
        runner = self._runners.get(record.parsed.full.lower())
        if runner is None or runner.retired:
            return None
        if runner.num_ctx != num_ctx or runner.record.digest != record.digest:
            # Runner options or the model itself changed: reload (spec §2.4 "Reloads").
            runner.retired = True
            if not runner.in_flight:
                self._drop(runner)
            return None
        return runner

    def release(self, runner: Runner) -> None:
        """One request on `runner` finished; start its idle timer or unload it."""
        with self._state:
            runner.in_flight -= 1
            if not runner.in_flight:
                runner.expires_at = time.time() + runner.keep_alive
                if runner.retired or runner.keep_alive <= 0:
                    self._drop(runner)
        self._notify()

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
        self._notify()
        return True

    def _drop(self, runner: Runner) -> None:
        """Forget `runner` and free its caches (call with `_state` held, runner idle)."""
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
            log.info("unloaded %s", runner.record.name)
        runner.close()
        self._unloaded.append(weakref.ref(runner.model))

    def return_memory(self) -> None:
        """Give the memory of unloaded models back to the operating system.

        Their arrays are freed once the last request holding them finishes, but the heap keeps
        freed memory for reuse (engine/models/heap.py: arrays of up to 32 MiB come from it), so
        the process would stay near its loaded size. Once a dropped model is garbage,
        `heap.trim` hands those pages back. Models still shared with a loaded runner are not
        waited for. Called by the server's reaper task.
        """
        with self._state:
            if not self._unloaded:
                return
            held = {id(r.model) for r in self._runners.values()}
        gc.collect()
        with self._state:
            alive = [m for m in self._unloaded if m() is not None]
            freed = len(alive) < len(self._unloaded)
            self._unloaded = [m for m in alive if id(m()) not in held]
        if freed:
            heap.trim()

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

    def _notify(self) -> None:
        """Wake the requests waiting for a slot or for room (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed in between: nobody is waiting
            pass

    def _wake(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()


def _estimate(path: Path, num_ctx: int) -> int:
    """Bytes a model needs to load (engine's memory_needed); 0 when the GGUF cannot say, and
    the load itself then reports the problem."""
    try:
        gguf = GGUFFile(path)
        return memory_needed(gguf, ModelConfig.from_gguf(gguf.metadata), num_ctx)
    except (EngineError, ValueError, KeyError):
        return 0


def array_bytes(obj: Any) -> int:
    """Bytes of the NumPy arrays `obj` holds (through attributes, dataclasses and
    containers), each buffer counted once; memory-mapped file data is not counted."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    visited: set[int] = set()
    while stack:
        o = stack.pop()
        if id(o) in visited:
            continue
        visited.add(id(o))
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if not isinstance(base, np.memmap) and base.base is None and id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif is_dataclass(o) and not isinstance(o, type):
            stack.extend(getattr(o, f.name) for f in fields(o))
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            stack.extend(vars(o).values())
    return total


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


def _env_int(name: str, default: int) -> int:
    """An integer environment setting; unset or not an integer: the default (Ollama logs and
    goes on with its default too)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        log.warning("invalid %s=%r, using %d", name, text, default)
        return default
