"""The on-disk store (server/store.py, server/gojson.py): layout, encodings, lookups, pruning and
atomic writes (spec/ollama-api.md §13, checklist S1, S2, CR8, M15)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from server import gojson
from server.errors import InvalidName, ModelNotFound, ServerError
from server.manifest import (
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    encode_messages,
    encode_params,
    file_type_name,
    human_number,
)
from server.names import parse_name
from server.store import STALE_SECONDS, Store
from tests.server.conftest import assert_consistent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_create_from_gguf_layout(store: Store, tiny_gguf: Path) -> None:  # S1, CR8
    rec = store.create_from_gguf(
        "tiny", tiny_gguf, template="{{ .Prompt }}", system="sys", parameters={"top_k": 3}
    )
    manifest_file = store.root / "manifests/registry.ollama.ai/library/tiny/latest"
    data = manifest_file.read_bytes()
    assert rec.digest == _sha(data)
    obj = json.loads(data)
    assert data.endswith(b"}\n") and b" " not in data
    assert obj["schemaVersion"] == 2 and obj["mediaType"] == MEDIA_MANIFEST
    assert obj["config"]["mediaType"] == MEDIA_CONFIG
    assert [x["mediaType"] for x in obj["layers"]] == [
        MEDIA_MODEL,
        MEDIA_TEMPLATE,
        MEDIA_SYSTEM,
        MEDIA_PARAMS,
    ]
    assert obj["layers"][0]["from"] == "tiny.gguf"
    for layer in [obj["config"], *obj["layers"]]:
        blob = store.root / "blobs" / layer["digest"].replace(":", "-")
        assert _sha(blob.read_bytes()) == layer["digest"][7:]
        assert blob.stat().st_size == layer["size"]
    assert (store.blobs_dir / f"sha256-{_sha(tiny_gguf.read_bytes())}").read_bytes() == (
        tiny_gguf.read_bytes()
    )
    config = store.read_blob(obj["config"]["digest"])
    assert config == (
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
        b'"model_type":"112","file_type":"unknown","architecture":"amd64","os":"linux"}\n'
    )
    assert rec.size == sum(x["size"] for x in [obj["config"], *obj["layers"]])
    assert (rec.template, rec.system, rec.parameters) == ("{{ .Prompt }}", "sys", {"top_k": 3})
    assert rec.details.quantization_level == "unknown"
    assert rec.gguf_path == store.blobs_dir / f"sha256-{_sha(tiny_gguf.read_bytes())}"
    assert_consistent(store)


def test_smollm2_config(store: Store, smollm2_path: Path) -> None:
    rec = store.create_from_gguf("smollm2", smollm2_path)
    assert rec.details.to_json() == {
        "parent_model": smollm2_path.name,
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }


def test_params_blob_encoding() -> None:  # S2, spec §13.5 example
    assert encode_params({"temperature": 0.7, "stop": ["<|im_end|>"]}) == (
        b'{"stop":["\\u003c|im_end|\\u003e"],"temperature":0.7}\n'
    )
    assert encode_params({"num_ctx": 4096, "b": {"z": 1, "a": True}, "x": 1e21}) == (
        b'{"b":{"a":true,"z":1},"num_ctx":4096,"x":1e+21}\n'
    )


def test_messages_blob_encoding() -> None:
    assert encode_messages(
        [{"content": "a&b", "role": "user", "images": []}, {"role": "assistant", "content": ""}]
    ) == (b'[{"role":"user","content":"a\\u0026b"},{"role":"assistant","content":""}]\n')


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.7, "0.7"),
        (4096.0, "4096"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-0.0, "-0"),
    ],
)
def test_go_json_floats(x: float, text: str) -> None:
    assert gojson.go_float(x) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (134_515_008, "134.52M"),
        (22_000_000, "22M"),
        (7_000_000_000, "7B"),
        (8_030_261_248, "8.0B"),
        (1_500, "2K"),
        (999, "999"),
    ],
)
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


def test_file_type_names() -> None:
    assert [file_type_name(v) for v in (0, 1, 2, 15, 18, 32, 99, None)] == [
        "unknown",
        "F16",
        "Q4_0",
        "Q4_K_M",
        "Q6_K",
        "BF16",
        "unknown",
        "unknown",
    ]


def test_resolve_errors(store: Store) -> None:
    with pytest.raises(ModelNotFound, match="^model 'nope' not found$"):
        store.resolve("nope")
    with pytest.raises(InvalidName):
        store.resolve("bad name")


def test_lookup_ignores_case_and_keeps_the_first_spelling(
    store: Store, tiny_gguf: Path
) -> None:  # M15
    store.create_from_gguf("Tiny", tiny_gguf)
    assert store.resolve("tiny").name == "Tiny:latest"
    assert store.resolve("REGISTRY.OLLAMA.AI/Library/TINY:Latest").name == "Tiny:latest"
    store.create_from_gguf("TINY:v2", tiny_gguf, system="two")
    model_dirs = list((store.manifests_dir / "registry.ollama.ai/library").iterdir())
    assert [p.name for p in model_dirs] == ["Tiny"]
    assert sorted(r.name for r in store.list_models()) == ["Tiny:latest", "Tiny:v2"]


def test_copy_shares_blobs_and_delete_prunes_only_unreferenced(
    store: Store, tiny_gguf: Path
) -> None:
    store.create_from_gguf("a", tiny_gguf, system="only a")
    store.copy(parse_name("a"), parse_name("ns/b:x"))
    assert (store.manifests_dir / "registry.ollama.ai/ns/b/x").read_bytes() == (
        store.manifest_path(parse_name("a")).read_bytes()
    )
    store.create_from_gguf("c", tiny_gguf, system="only c")
    blobs_before = {p.name for p in store.blobs_dir.iterdir()}
    store.delete(parse_name("a"))
    assert {p.name for p in store.blobs_dir.iterdir()} == blobs_before  # all still used
    store.delete(parse_name("ns/b:x"))
    only_a = "sha256-" + _sha(b"only a")
    assert only_a not in {p.name for p in store.blobs_dir.iterdir()}
    assert not (store.manifests_dir / "registry.ollama.ai/ns").exists()  # empty dirs removed
    store.delete(parse_name("c"))
    assert list(store.blobs_dir.iterdir()) == []
    with pytest.raises(ModelNotFound):
        store.delete(parse_name("c"))


def test_replacing_a_model_prunes_its_old_blobs(store: Store, tiny_gguf: Path) -> None:
    store.create_from_gguf("m", tiny_gguf, system="first")
    store.create_from_gguf("m", tiny_gguf, system="second")
    assert not store.has_blob("sha256:" + _sha(b"first"))
    assert store.has_blob("sha256:" + _sha(b"second"))


def test_noprune_keeps_blobs(tmp_path: Path, tiny_gguf: Path) -> None:
    store = Store(tmp_path / "m", prune=False)
    store.create_from_gguf("m", tiny_gguf, system="first")
    store.delete(parse_name("m"))
    assert store.has_blob("sha256:" + _sha(b"first"))


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("OLLAMA_NOPRUNE", "1")
    store = Store.from_env()
    assert store.root == tmp_path / "elsewhere" and not store.prune
    assert (tmp_path / "elsewhere/blobs").is_dir()
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Store.from_env().root == tmp_path / ".ollama/models"


def test_manifest_is_not_written_when_a_blob_is_missing(store: Store) -> None:
    config, _ = store.layer_from_bytes(MEDIA_CONFIG, b"{}\n")
    missing = Layer(MEDIA_MODEL, "sha256:" + "0" * 64, 10)
    data = Manifest(config, (missing,)).encode()
    with pytest.raises(ServerError, match="is missing"):
        store.write_manifest_bytes(parse_name("m"), data)
    assert list(store.names()) == []


def test_failed_blob_write_leaves_nothing(store: Store) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"part one"
        raise OSError("connection lost")

    with pytest.raises(OSError, match="connection lost"):
        store.add_blob_stream(chunks())
    assert list(store.blobs_dir.iterdir()) == []


def test_list_skips_unreadable_manifests_and_sorts_newest_first(
    store: Store, tiny_gguf: Path
) -> None:
    store.create_from_gguf("old", tiny_gguf)
    store.create_from_gguf("new", tiny_gguf)
    old = store.manifest_path(parse_name("old"))
    os.utime(old, (time.time() - 100, time.time() - 100))
    broken = store.manifests_dir / "registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"{not json")
    assert [r.name for r in store.list_models()] == ["new:latest", "old:latest"]


def test_reads_a_directory_written_by_ollama(store: Store, tiny_gguf: Path) -> None:
    """A manifest with Ollama's legacy prompt layer and pretty config, placed by hand."""
    model, _ = store.layer_from_bytes(MEDIA_MODEL, tiny_gguf.read_bytes())
    prompt, _ = store.layer_from_bytes(MEDIA_PROMPT, b"[INST] {{ .Prompt }} [/INST]")
    config, _ = store.layer_from_bytes(
        MEDIA_CONFIG, b'{"model_format":"gguf","model_family":"llama","file_type":"Q4_0"}'
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [
            {"mediaType": m.media_type, "digest": m.digest, "size": m.size} for m in (model, prompt)
        ],
    }
    path = store.manifests_dir / "registry.ollama.ai/library/legacy/7b"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest, indent=2))
    rec = store.resolve("legacy:7b")
    assert rec.template == "[INST] {{ .Prompt }} [/INST]"
    assert rec.details.families is None and rec.details.quantization_level == "Q4_0"
    assert rec.digest == _sha(path.read_bytes())


def test_startup_prune_removes_stale_unreferenced_files(store: Store, tiny_gguf: Path) -> None:
    store.create_from_gguf("keep", tiny_gguf)
    old = time.time() - STALE_SECONDS - 10
    stale_blob, _ = store.add_blob_bytes(b"orphan")
    fresh_blob, _ = store.add_blob_bytes(b"fresh orphan")
    stale_tmp = store.blobs_dir / "tmp-0123"
    stale_tmp.write_bytes(b"half")
    for path in (store.blob_path(stale_blob), stale_tmp, *store.blobs_dir.glob("sha256-*")):
        if path != store.blob_path(fresh_blob):
            os.utime(path, (old, old))
    (store.manifests_dir / "registry.ollama.ai/empty/dir").mkdir(parents=True)
    store.prune_startup()
    assert not store.has_blob(stale_blob) and not stale_tmp.exists()
    assert store.has_blob(fresh_blob)
    assert not (store.manifests_dir / "registry.ollama.ai/empty").exists()
    assert_consistent(store)
    assert store.resolve("keep").name == "keep:latest"


def test_a_damaged_model_is_a_server_error_and_skipped_in_lists(
    store: Store, tiny_gguf: Path
) -> None:
    store.create_from_gguf("ok", tiny_gguf)
    rec = store.create_from_gguf("damaged", tiny_gguf, system="gone")
    system = next(x for x in rec.manifest.layers if x.media_type == MEDIA_SYSTEM)
    store.blob_path(system.digest).unlink()
    with pytest.raises(ServerError, match="^model damaged:latest cannot be read: "):
        store.resolve("damaged")
    assert [r.name for r in store.list_models()] == ["ok:latest"]
