"""`/api/create`: build a model from uploaded GGUF or Safetensors blobs, or an existing model.

Spec §11.5. Safetensors directories are converted to GGUF by engine.gguf.convert.

`parse_create` does the checks Ollama makes before its progress stream starts; `run_create`
yields the progress objects (`{"status": …}`) in Ollama's order and raises ServerError subclasses
for failures inside the stream. Layers are assembled in Ollama's order (§11.5.3): inherited or
uploaded layers first, then template, system, licenses, params and messages; the manifest is
written last, so a failure or a kill never leaves a half-built model.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.chat.templates import GoTemplate
from engine.errors import GGUFError, InvalidOption, TemplateError
from engine.gguf.convert import ConvertError, open_directory
from engine.gguf.reader import GGUF_MAGIC, GGUFFile
from engine.sampling.options import resolve
from server.errors import InvalidName, InvalidRequest, ServerError, Unsupported
from server.manifest import (
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    config_from_gguf,
    encode_messages,
    encode_params,
    file_type_name,
)
from server.names import Name, parse_name
from server.store import TEMP_PREFIX, Store

log = logging.getLogger(__name__)

# quantize value (upper-cased) -> the GGUF file type name written; Ollama's accepted set plus
# the legacy and K types the project's quantizer implements (issue 7).
QUANTIZE_TYPES = {
    "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q4_K_S": "Q4_K_S", "Q4_K_M": "Q4_K_M", "Q4_K": "Q4_K_M", "Q6_K": "Q6_K",
    "F16": "F16", "F32": "F32",
}  # fmt: skip
QUANTIZABLE_SOURCES = ("F32", "F16", "BF16")
QUANTIZE_DIGEST = "0" * 19  # the placeholder digest Ollama puts on quantize progress lines

# quantize_gguf(src, dst, file_type, progress=...): progress(n) after each tensor of n bytes
Quantizer = Callable[..., None]


@dataclass
class CreateRequest:
    """A validated /api/create body (§11.5.1)."""

    name: Name
    from_: str = ""
    files: dict[str, str] | None = None  # an empty object differs from none (§11.5.2)
    adapters: dict[str, str] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    license: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    quantize: str = ""
    requires: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # config overrides, already checked


def _clean_relative(path: str) -> bool:
    return (
        bool(path)
        and not path.startswith("/")
        and all(part not in ("", "..") for part in path.split("/"))
        and posixpath.normpath(path) == path
    )


def parse_create(body: dict[str, Any]) -> CreateRequest:
    """Checks made before the stream starts; `body` has lowercased top-level keys."""
    files = None if body.get("files") is None else _digest_map(body["files"], "files")
    adapters = _digest_map(body.get("adapters"), "adapters")
    for key in files or {}:
        if not _clean_relative(key):
            raise InvalidRequest("file path must be relative")
    raw = body.get("model") or body.get("name") or ""
    if not isinstance(raw, str):
        raise InvalidName(str(raw))
    license_value = body.get("license")
    licenses = [license_value] if isinstance(license_value, str) else license_value or []
    if not isinstance(licenses, list) or not all(isinstance(x, str) for x in licenses):
        raise InvalidRequest("json: cannot unmarshal license into string or array of strings")
    return CreateRequest(
        name=parse_name(raw),
        from_=_string(body, "from"),
        files=files,
        adapters=adapters,
        template=_string(body, "template"),
        system=_string(body, "system"),
        license=[x for x in licenses if x],
        parameters=_parameters(_object(body, "parameters")),
        messages=[_message(m) for m in _list(body, "messages")],
        quantize=_string(body, "quantize") or _string(body, "quantization"),
        requires=_string(body, "requires"),
        info=_info(_object(body, "info")),
    )


def _parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, refused when they would fail every later generate."""
    try:
        resolve(params, None)
    except InvalidOption as e:
        raise InvalidRequest(f"invalid parameter: {e}") from None
    return params


# `info` keys -> the config key each overrides (§11.5.1).
_INFO_STRINGS = {"model_family": "model_family", "base_name": "base_name",
                 "quantization_level": "file_type", "parameter_size": "model_type"}  # fmt: skip
_INFO_INTS = ("context_length", "embedding_length")


def _info(info: dict[str, Any]) -> dict[str, Any]:
    """Validate `info` and map it onto config keys; unknown keys are ignored."""
    out: dict[str, Any] = {}
    for key, config_key in _INFO_STRINGS.items():
        if key in info:
            if not isinstance(info[key], str):
                raise InvalidRequest(f'info field "{key}" must be a string')
            out[config_key] = info[key]
    for key in _INFO_INTS:
        if key in info:
            value = info[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f'info field "{key}" must be a number')
            if value < 0 or value != int(value):
                raise InvalidRequest(f'info field "{key}" must be a non-negative integer')
            out[key] = int(value)
    if "capabilities" in info:
        caps = info["capabilities"]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise InvalidRequest('info field "capabilities" must be an array of strings')
        out["capabilities"] = caps
    return out


def _field_error(key: str, go_type: str) -> InvalidRequest:
    return InvalidRequest(
        f"json: cannot unmarshal into Go struct field CreateRequest.{key} of type {go_type}"
    )


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _field_error(key, "string")
    return value


def original_case(value: Any) -> Any:
    """A nested object as sent: schemas.decode_body lowercases keys but keeps the originals."""
    original = getattr(value, "original", None)
    return original() if callable(original) else value


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = original_case(body.get(key))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _field_error(key, "map[string]interface {}")
    return value


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _field_error(key, "[]api.Message")
    return value


def _message(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _field_error("messages", "api.Message")
    role = value.get("role") or ""
    content = value.get("content") or ""
    if not isinstance(role, str) or not isinstance(content, str):
        raise _field_error("messages", "string")
    out: dict[str, Any] = {"role": role.lower(), "content": content}
    out.update(
        {k: value[k] for k in ("thinking", "images", "tool_calls", "tool_name") if k in value}
    )
    return out


def _digest_map(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _field_error(key, "map[string]string")
    if any(not v for v in value.values()):
        raise InvalidRequest("invalid digest format")
    return dict(original_case(value))


# ---- the build -------------------------------------------------------------------------------


@dataclass
class _Build:
    """Layers being assembled; `created` holds digests whose blob this create wrote first."""

    layers: list[Layer] = field(default_factory=list)
    created: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)  # digests of layers dropped on the way
    config: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def replace(self, media_types: tuple[str, ...], layer: Layer, created: bool) -> None:
        self.removed.update(x.digest for x in self.layers if x.media_type in media_types)
        self.layers = [x for x in self.layers if x.media_type not in media_types]
        self.append(layer, created)

    def append(self, layer: Layer, created: bool) -> None:
        self.layers.append(layer)
        if created:
            self.created.add(layer.digest)


def run_create(
    store: Store,
    req: CreateRequest,
    quantizer: Quantizer,
    pull: Callable[[Name], Iterator[dict[str, Any]]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Progress objects for one create; raises ServerError (or a subclass) on failure.

    `pull` fetches a `from` model that is not local, as Ollama does; without it such a
    request fails with `pull model manifest: file does not exist`.
    """
    if not req.from_ and req.files is None:
        raise InvalidRequest("neither 'from' or 'files' was specified")
    if len(req.adapters) > 1:
        raise InvalidRequest("only one adapter is currently supported")
    if req.adapters:
        raise Unsupported("adapters are not supported: refllama cannot apply LoRA adapters")
    build = _Build()
    if req.from_:  # Ollama ignores `files` when `from` is set
        yield from _from_model(store, req.from_, build, pull)
    elif not req.files:
        raise InvalidRequest("no files provided to convert")
    else:
        yield from _from_files(store, req.files, build)
    model_layer = next((x for x in build.layers if x.media_type == MEDIA_MODEL), None)
    if model_layer is None:
        raise InvalidRequest("no model layer: the files hold only adapters or projectors")
    if req.quantize:
        yield from _quantize(store, req.quantize, build, model_layer, quantizer)
    if req.requires:
        build.config["requires"] = req.requires
    build.config.update(req.info)
    _apply_fields(store, req, build)
    for layer in build.layers:
        verb = "creating new" if layer.digest in build.created else "using existing"
        yield {"status": f"{verb} layer {layer.digest}"}
    yield {"status": "writing manifest"}
    store.write_model(req.name, build.layers, build.config)
    # Ollama deletes the blobs of layers dropped during create unless a manifest still uses them.
    store.prune_blobs(build.removed - {x.digest for x in build.layers})
    yield {"status": "success"}


def _from_files(store: Store, files: dict[str, str], build: _Build) -> Iterator[dict[str, Any]]:
    if any(name.endswith(".safetensors") for name in files):
        yield from _from_safetensors(store, files, build)
        return
    for filename in sorted(files):
        digest = files[filename]
        path = store.blob_path(digest)
        # A `.gguf` name is parsed (and fails) as GGUF; other names must carry the GGUF magic.
        if filename.endswith(".gguf"):
            yield {"status": "parsing GGUF"}
            if not path.is_file():
                raise ServerError(f"open {path}: no such file or directory")
            if _magic(path) != GGUF_MAGIC:
                raise InvalidRequest("supplied file was not in GGUF format")
        elif not path.is_file() or _magic(path) != GGUF_MAGIC:
            raise InvalidRequest("unknown type")
        else:
            yield {"status": "parsing GGUF"}
        try:
            gguf = GGUFFile(path)
        except GGUFError as e:
            raise InvalidRequest(f"supplied file was not in GGUF format: {e}") from e
        media = _gguf_media_type(gguf)
        build.layers.append(Layer(media, digest, gguf.size, from_=filename))
        if media == MEDIA_MODEL and not build.config:
            build.config = config_from_gguf(gguf)
    if sum(x.media_type == MEDIA_MODEL for x in build.layers) > 1:
        raise Unsupported("split GGUF models (several model files) are not supported")


def _from_safetensors(
    store: Store, files: dict[str, str], build: _Build
) -> Iterator[dict[str, Any]]:
    """Convert a Safetensors directory's blobs to one F16 GGUF model layer, as Ollama does.

    The blobs are linked into a temporary directory under their relative names; the directory
    is checked (config, architecture, every tensor shape, tokenizer) before the first progress
    line, so a bad directory answers 400 and nothing is written. The GGUF enters the store only
    when complete.
    """
    with tempfile.TemporaryDirectory(dir=store.blobs_dir, prefix=TEMP_PREFIX) as tmp:
        root = Path(tmp) / "model"
        for name, digest in files.items():
            blob = store.blob_path(digest)
            if not blob.is_file():
                raise InvalidRequest(f"blob {digest} for {name} does not exist: upload it first")
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, target)
            except OSError:
                shutil.copyfile(blob, target)
        try:
            conversion = open_directory(root)
        except ConvertError as e:
            raise InvalidRequest(f"convert safetensors: {e}") from e
        yield {"status": "converting model"}
        out = Path(tmp) / "model.gguf"
        for _, done, total in conversion.write(out):
            yield {"status": "converting model", "total": total, "completed": done}
        yield {"status": "parsing GGUF"}
        gguf = GGUFFile(out)
        digest, created = store.add_blob_file(out)
    build.append(Layer(MEDIA_MODEL, digest, gguf.size), created)
    build.config = config_from_gguf(gguf)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _gguf_media_type(gguf: GGUFFile) -> str:
    kind = gguf.metadata.get("general.type")
    arch = gguf.metadata.get("general.architecture", "")
    if kind == "adapter":
        return MEDIA_ADAPTER
    has_blocks = f"{arch}.block_count" in gguf.metadata
    if kind in ("projector", "mmproj") or (
        not has_blocks and f"{arch}.vision.block_count" in gguf.metadata
    ):
        return MEDIA_PROJECTOR
    return MEDIA_MODEL


def _from_model(
    store: Store,
    source: str,
    build: _Build,
    pull: Callable[[Name], Iterator[dict[str, Any]]] | None,
) -> Iterator[dict[str, Any]]:
    name = parse_name(source)
    found = store.read_manifest(store.canonical(name))
    if found is None:
        if pull is None:
            raise ServerError("pull model manifest: file does not exist")
        yield from pull(name)
    record = store.resolve(name)
    for layer in record.manifest.layers:
        store.blob_path(layer.digest).touch()
        build.layers.append(
            Layer(layer.media_type, layer.digest, layer.size, record.name, layer.name)
        )
    build.config = config_from_gguf(GGUFFile(record.gguf_path), inherit=record.config)
    build.params = dict(record.parameters)


def _quantize(
    store: Store, value: str, build: _Build, layer: Layer, quantizer: Quantizer
) -> Iterator[dict[str, Any]]:
    target = QUANTIZE_TYPES.get(value.upper())
    if target is None:
        raise ServerError(
            f"unsupported quantization type {value} - supported types are "
            f"F32, F16, Q4_K_S, Q4_K_M, Q8_0"
        )
    source = build.config.get("file_type", "unknown")
    if source == "unknown":  # all-F32 files store file_type 0, which Ollama names "unknown"
        source = _raw_file_type(store.blob_path(layer.digest))
    if source == target:
        return
    if source not in QUANTIZABLE_SOURCES:
        raise ServerError("quantization is only supported for F16, BF16 and F32 models")
    progress = {"status": f"quantizing {source} model to {target}", "digest": QUANTIZE_DIGEST}
    yield {**progress, "total": layer.size}
    tmp = store.temp_path()
    try:
        yield from _run_quantizer(
            quantizer, store.blob_path(layer.digest), tmp, target, progress, layer.size
        )
        yield {"status": "verifying conversion"}
        gguf = GGUFFile(tmp)
        digest, created = store.add_blob_file(tmp)
    finally:
        tmp.unlink(missing_ok=True)
    new = Layer(MEDIA_MODEL, digest, gguf.size, from_=layer.from_)
    build.layers = [new if x == layer else x for x in build.layers]
    build.removed.add(layer.digest)
    if created:
        build.created.add(digest)
    inherit = {
        k: build.config[k]
        for k in ("renderer", "parser", "requires", "capabilities")
        if k in build.config
    }
    build.config = config_from_gguf(gguf, inherit=inherit)


def _raw_file_type(path: Path) -> str:
    value = GGUFFile(path).metadata.get("general.file_type", 0)
    return "F32" if value == 0 else file_type_name(value)


def _run_quantizer(
    quantizer: Quantizer, src: Path, dst: Path, target: str, progress: dict[str, Any], total: int
) -> Iterator[dict[str, Any]]:
    """Run the quantizer in a thread; every half second a progress line with the source bytes
    of the tensors it has finished (the quantizer's per-tensor callback), below `total` (the
    GGUF's size, metadata included) until the end, as Ollama reports it."""
    errors: list[BaseException] = []
    done = [0]

    def tensor_done(n_bytes: int) -> None:
        done[0] += n_bytes

    def work() -> None:
        try:
            quantizer(src, dst, target, progress=tensor_done)
        except BaseException as e:  # re-raised in the generator's thread below
            errors.append(e)

    thread = threading.Thread(target=work, name="quantize", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        if thread.is_alive():
            completed = min(done[0], total - 1)
            yield {**progress, "total": total, **({"completed": completed} if completed else {})}
    if errors:
        raise errors[0]
    yield {**progress, "total": total, "completed": total}


def _apply_fields(store: Store, req: CreateRequest, build: _Build) -> None:
    """Template, system, license, params and messages layers, in Ollama's order (§11.5.3)."""
    if req.template:
        try:
            GoTemplate(req.template)
        except TemplateError as e:
            raise InvalidRequest(f"template error: {e}") from e
        layer, created = store.layer_from_bytes(MEDIA_TEMPLATE, req.template.encode("utf-8"))
        build.replace((MEDIA_TEMPLATE, MEDIA_PROMPT), layer, created)
    if req.system:
        layer, created = store.layer_from_bytes(MEDIA_SYSTEM, req.system.encode("utf-8"))
        build.replace((MEDIA_SYSTEM,), layer, created)
    for text in req.license:
        build.append(*store.layer_from_bytes(MEDIA_LICENSE, text.encode("utf-8")))
    params = {**build.params, **req.parameters}  # request keys win; lists are replaced whole
    if params:
        layer, created = store.layer_from_bytes(MEDIA_PARAMS, encode_params(params))
        build.replace((MEDIA_PARAMS,), layer, created)
    if req.messages:
        layer, created = store.layer_from_bytes(MEDIA_MESSAGES, encode_messages(req.messages))
        build.replace((MEDIA_MESSAGES,), layer, created)
