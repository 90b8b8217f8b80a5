"""The model store: Ollama's on-disk layout of content-addressed blobs and manifests.

Layout (spec/ollama-api.md §13): `<root>/blobs/sha256-<hex>` holds bytes whose SHA-256 is <hex>;
`<root>/manifests/<host>/<namespace>/<model>/<tag>` holds a docker v2 manifest naming a config
blob and typed layers. A directory written by Ollama can be served from here and vice versa.

Crash safety: every file is written to a temporary name inside `blobs/`, flushed, verified and
renamed into place, and a manifest is only written after all its blobs exist. A kill at any point
leaves at most an unreferenced temporary file (`tmp-…`, swept by `prune_startup`) or a pull's
resumable `-partial` state. This module never loads a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.gguf.reader import GGUFFile
from server import gojson
from server.errors import ModelNotFound, ServerError
from server.manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    config_from_gguf,
    encode_messages,
    encode_params,
    ordered_config,
)
from server.names import Name, parse_digest, parse_name

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TEMP_PREFIX = "tmp-"  # this store's in-progress files, always inside blobs/
STALE_SECONDS = 3600  # Ollama's startup GC only touches files older than an hour (§13.6)


@dataclass(frozen=True)
class ModelDetails:
    parent_model: str
    format: str
    family: str
    families: tuple[str, ...] | None
    parameter_size: str
    quantization_level: str

    def to_json(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": self.format,
            "family": self.family,
            "families": list(self.families) if self.families is not None else None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass(frozen=True)
class ModelRecord:
    """Everything the server needs about a stored model; nothing is loaded.

    `template` is None when the manifest has no TEMPLATE layer (the caller then uses Ollama's
    `{{ .Prompt }}` default or the GGUF's own template); `system` is None without a SYSTEM layer.
    `parameters` is the params layer as stored (values unchecked, §11.5.3): do not mutate it.
    """

    name: str  # shortest display form with tag, e.g. "smollm2:latest"
    parsed: Name  # with the stored spelling of each part
    digest: str  # hex SHA-256 of the manifest file's bytes
    manifest: Manifest
    config: dict[str, Any] = field(hash=False)
    gguf_path: Path
    template: str | None
    system: str | None
    parameters: dict[str, Any] = field(hash=False)
    messages: tuple[dict[str, Any], ...]
    license: tuple[str, ...]
    adapters: tuple[Path, ...]
    projectors: tuple[Path, ...]
    size: int  # layers plus config, bytes
    modified_ns: int  # manifest file mtime, ns since the epoch
    details: ModelDetails


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


class Store:
    """Blobs and manifests under one models directory. Thread-safe for the server's use."""

    def __init__(self, root: Path, prune: bool = True) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        self.prune = prune
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        # Held while a manifest is written or blobs are pruned, so a prune never deletes a
        # blob that a manifest being written refers to.
        self.lock = threading.RLock()

    @classmethod
    def from_env(cls) -> Store:
        """OLLAMA_MODELS (default ~/.ollama/models) and OLLAMA_NOPRUNE, as Ollama reads them."""
        root = os.environ.get("OLLAMA_MODELS") or str(Path.home() / ".ollama" / "models")
        noprune = os.environ.get("OLLAMA_NOPRUNE", "").strip().lower() in ("1", "true", "t", "yes")
        return cls(Path(root).expanduser(), prune=not noprune)

    # ---- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Path of the blob for `sha256:<hex>` or `sha256-<hex>`; raises InvalidDigest."""
        return self.blobs_dir / parse_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def temp_path(self) -> Path:
        """A fresh temporary file name in `blobs/`, on the same file system as every target."""
        return self.blobs_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"

    def add_blob_stream(self, chunks: Iterable[bytes]) -> tuple[str, bool]:
        """Store bytes under their own digest; returns (`sha256:<hex>`, created)."""
        tmp = self.temp_path()
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = f"sha256:{h.hexdigest()}"
            return digest, self.commit_temp(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    def add_blob_bytes(self, data: bytes) -> tuple[str, bool]:
        return self.add_blob_stream([data])

    def add_blob_file(self, path: Path) -> tuple[str, bool]:
        """Copy a file's bytes into the store (hashing while copying)."""
        with open(path, "rb") as f:
            return self.add_blob_stream(iter(lambda: f.read(CHUNK), b""))

    def commit_temp(self, tmp: Path, digest: str) -> bool:
        """Rename a temp file holding `digest`'s bytes into place; False if it already existed."""
        target = self.blob_path(digest)
        if target.exists():
            os.utime(target)
            return False
        os.replace(tmp, target)
        return True

    def commit_verified(self, tmp: Path, digest: str) -> None:
        """Move `tmp` into place as `digest` after checking its hash (used by pull)."""
        actual = sha256_file(tmp)
        if actual != digest:
            tmp.unlink(missing_ok=True)
            raise ServerError(
                f"digest mismatch, file must be downloaded again: want {digest}, got {actual}"
            )
        self.commit_temp(tmp, digest)
        tmp.unlink(missing_ok=True)

    def layer_from_bytes(self, media_type: str, data: bytes) -> tuple[Layer, bool]:
        digest, created = self.add_blob_bytes(data)
        return Layer(media_type, digest, len(data)), created

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # ---- manifests --------------------------------------------------------------------------

    def canonical(self, name: Name) -> Name:
        """`name` with each part replaced by an existing directory's spelling, ignoring case."""
        parts = list(name.parts)
        here = self.manifests_dir
        for i, part in enumerate(parts):
            if not here.is_dir():
                break
            if (here / part).exists():
                here = here / part
                continue
            match = next((p.name for p in here.iterdir() if p.name.lower() == part.lower()), None)
            if match is None:
                break
            parts[i] = match
            here = here / match
        return Name(*parts, scheme=name.scheme)

    def manifest_path(self, name: Name) -> Path:
        return self.manifests_dir.joinpath(*name.parts)

    def read_manifest(self, name: Name) -> tuple[bytes, Manifest] | None:
        """The manifest bytes and parsed form for a canonical name, or None if absent."""
        path = self.manifest_path(name)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return data, Manifest.decode(data)

    def _write_file_atomic(self, target: Path, data: bytes) -> None:
        tmp = self.temp_path()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def write_manifest_bytes(self, name: Name, data: bytes) -> tuple[Name, list[str]]:
        """Store raw manifest bytes under a name (its blobs must exist).

        Blobs referenced only by the manifest previously stored under that name are pruned.
        Returns the name as stored (existing spelling) and the pruned digests.
        """
        manifest = Manifest.decode(data)
        with self.lock:
            missing = [b.digest for b in manifest.blobs if not self.has_blob(b.digest)]
            if missing:
                raise ServerError(f"cannot write manifest: blob {missing[0]} is missing")
            name = self.canonical(name)
            old = self.read_manifest(name)
            self._write_file_atomic(self.manifest_path(name), data)
            removed = self.prune_blobs({b.digest for b in old[1].blobs}) if old else []
        return name, removed

    def write_model(self, name: Name, layers: Iterable[Layer], config: dict[str, Any]) -> Name:
        """Write the config blob, then the manifest: the last step that makes the model visible."""
        config_layer, _ = self.layer_from_bytes(
            MEDIA_CONFIG, gojson.encode_line(ordered_config(config))
        )
        manifest = Manifest(config_layer, tuple(layers))
        return self.write_manifest_bytes(name, manifest.encode())[0]

    def names(self) -> Iterator[Name]:
        """Every stored name whose path parts are valid, in no particular order."""
        for path in self.manifests_dir.glob("*/*/*/*"):
            if not path.is_file():
                continue
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                parsed = parse_name(f"{host}/{namespace}/{model}:{tag}")
            except ServerError:
                continue
            yield parsed

    def referenced_digests(self) -> set[str]:
        """Every blob digest that some readable manifest references."""
        refs: set[str] = set()
        for name in self.names():
            try:
                found = self.read_manifest(name)
            except ValueError:
                continue
            if found is not None:
                refs.update(b.digest for b in found[1].blobs)
        return refs

    def prune_blobs(self, candidates: set[str]) -> list[str]:
        """Delete those candidate blobs no manifest references (unless pruning is off)."""
        if not self.prune or not candidates:
            return []
        with self.lock:
            unused = sorted(candidates - self.referenced_digests())
            for digest in unused:
                with contextlib.suppress(FileNotFoundError, ServerError):
                    self.blob_path(digest).unlink()
        return unused

    def _remove_empty_dirs(self) -> None:
        for path in sorted(self.manifests_dir.glob("**/"), key=lambda p: -len(p.parts)):
            if path != self.manifests_dir:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only succeeds when empty

    def delete(self, name: Name) -> None:
        """Remove a manifest and the blobs nothing else references; ModelNotFound if absent."""
        with self.lock:
            name = self.canonical(name)
            found = self.read_manifest(name)
            if found is None:
                raise ModelNotFound(name.short)
            self.manifest_path(name).unlink()
            self._remove_empty_dirs()
            self.prune_blobs({b.digest for b in found[1].blobs})

    def copy(self, source: Name, destination: Name) -> None:
        """Copy the manifest bytes to another name; blobs are shared."""
        source = self.canonical(source)
        with self.lock:
            found = self.read_manifest(source)
            if found is None:
                raise ModelNotFound(source.short)
            destination = self.canonical(destination)
            if self.manifest_path(source) == self.manifest_path(destination):
                return
            self.write_manifest_bytes(destination, found[0])

    def prune_startup(self) -> None:
        """Ollama's startup GC (§13.6): stale unreferenced or non-digest blob files go, and our
        own `tmp-…` files go whatever their age: they belong to an upload, create or pull that
        a kill interrupted, since no other process writes this store while we serve."""
        if not self.prune:
            return
        with self.lock:
            try:
                refs = set()
                for name in self.names():
                    found = self.read_manifest(name)
                    if found is not None:
                        refs.update(b.digest.replace(":", "-") for b in found[1].blobs)
            except ValueError:
                log.warning("a manifest does not parse; skipping blob pruning")
                return
            cutoff = time.time() - STALE_SECONDS
            for path in self.blobs_dir.iterdir():
                orphan = path.name.startswith(TEMP_PREFIX)
                if path.name not in refs and (orphan or path.stat().st_mtime < cutoff):
                    log.info("pruning unused blob file %s", path.name)
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
            self._remove_empty_dirs()

    # ---- models -----------------------------------------------------------------------------

    def resolve(self, name: str | Name) -> ModelRecord:
        """Look a model up by name (case-insensitively).

        Raises InvalidName for a malformed string, ModelNotFound (text `model '<x>' not found`,
        x as given) when no manifest exists, and ServerError (500) for a manifest, config or
        text layer that is unreadable (a store damaged from outside).
        """
        parsed = parse_name(name) if isinstance(name, str) else name
        parsed = self.canonical(parsed)
        try:
            found = self.read_manifest(parsed)
            if found is None:
                raise ModelNotFound(name if isinstance(name, str) else parsed.short)
            data, manifest = found
            mtime = self.manifest_path(parsed).stat().st_mtime_ns
            return self._record(parsed, data, manifest, mtime)
        except (OSError, ValueError) as e:  # json and UTF-8 decode errors are ValueErrors
            raise ServerError(f"model {parsed.short} cannot be read: {e}") from e

    def list_models(self) -> list[ModelRecord]:
        """All readable models, newest manifest first; unreadable ones are skipped."""
        records = []
        for name in self.names():
            try:
                records.append(self.resolve(name))
            except ServerError as e:
                log.warning("skipping model %s: %s", name.short, e)
        return sorted(records, key=lambda r: r.modified_ns, reverse=True)

    def _text(self, layer: Layer) -> str:
        return self.read_blob(layer.digest).decode("utf-8")

    def _record(self, name: Name, data: bytes, manifest: Manifest, mtime: int) -> ModelRecord:
        config = json.loads(self.read_blob(manifest.config.digest))
        if not isinstance(config, dict):
            raise ValueError("config blob is not a JSON object")
        by_type: dict[str, list[Layer]] = {}
        for layer in manifest.layers:
            by_type.setdefault(layer.media_type, []).append(layer)
        models = by_type.get(MEDIA_MODEL, [])
        if not models:
            raise ServerError(f"model {name.short} has no {MEDIA_MODEL} layer")
        templates = by_type.get(MEDIA_TEMPLATE, []) + by_type.get(MEDIA_PROMPT, [])
        systems = by_type.get(MEDIA_SYSTEM, [])
        params = by_type.get(MEDIA_PARAMS, [])
        messages = by_type.get(MEDIA_MESSAGES, [])
        parameters = json.loads(self.read_blob(params[-1].digest)) if params else {}
        message_list = json.loads(self.read_blob(messages[-1].digest)) if messages else []
        families = config.get("model_families")
        details = ModelDetails(
            parent_model=models[0].from_,
            format=str(config.get("model_format", "")),
            family=str(config.get("model_family", "")),
            families=tuple(families) if isinstance(families, list) else None,
            parameter_size=str(config.get("model_type", "")),
            quantization_level=str(config.get("file_type", "")),
        )
        return ModelRecord(
            name=name.short,
            parsed=name,
            digest=hashlib.sha256(data).hexdigest(),
            manifest=manifest,
            config=config,
            gguf_path=self.blob_path(models[0].digest),
            template=self._text(templates[-1]) if templates else None,
            system=self._text(systems[-1]) if systems else None,
            parameters=parameters if isinstance(parameters, dict) else {},
            messages=tuple(m for m in message_list if isinstance(m, dict)),
            license=tuple(self._text(x) for x in by_type.get(MEDIA_LICENSE, [])),
            adapters=tuple(self.blob_path(x.digest) for x in by_type.get(MEDIA_ADAPTER, [])),
            projectors=tuple(self.blob_path(x.digest) for x in by_type.get(MEDIA_PROJECTOR, [])),
            size=sum(layer.size for layer in manifest.blobs),
            modified_ns=mtime,
            details=details,
        )

    def create_from_gguf(
        self,
        name: str | Name,
        gguf_path: Path,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        license: str | list[str] | None = None,
    ) -> ModelRecord:
        """Import a GGUF file as a model (blob copied atomically), with optional extra layers.

        The layers and config are what `/api/create` builds from the same inputs (§11.5.3),
        without template autodetection.
        """
        parsed = parse_name(name) if isinstance(name, str) else name
        digest, _ = self.add_blob_file(gguf_path)
        gguf = GGUFFile(self.blob_path(digest))
        layers = [Layer(MEDIA_MODEL, digest, gguf.size, from_=Path(gguf_path).name)]
        layers += [
            layer for layer, _ in self.extra_layers(template, system, license, parameters, messages)
        ]
        stored = self.write_model(parsed, layers, config_from_gguf(gguf))
        return self.resolve(stored)

    def extra_layers(
        self,
        template: str | None,
        system: str | None,
        license: str | list[str] | None,
        parameters: dict[str, Any] | None,
        messages: list[dict[str, Any]] | None,
    ) -> list[tuple[Layer, bool]]:
        """New layers from create's request fields, in Ollama's order; (layer, created) pairs."""
        out = []
        if template is not None:
            out.append(self.layer_from_bytes(MEDIA_TEMPLATE, template.encode("utf-8")))
        if system:
            out.append(self.layer_from_bytes(MEDIA_SYSTEM, system.encode("utf-8")))
        licenses = [license] if isinstance(license, str) else list(license or [])
        for text in licenses:
            if text:
                out.append(self.layer_from_bytes(MEDIA_LICENSE, text.encode("utf-8")))
        if parameters:
            out.append(self.layer_from_bytes(MEDIA_PARAMS, encode_params(parameters)))
        if messages:
            out.append(self.layer_from_bytes(MEDIA_MESSAGES, encode_messages(messages)))
        return out
