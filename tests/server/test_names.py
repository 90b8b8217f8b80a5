"""Model names and digests (server/names.py) against spec/ollama-api.md §12."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.errors import InvalidDigest, InvalidName
from server.names import Name, is_valid_name, parse_digest, parse_name

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest")),
        (
            "llama3.2:1b-instruct-q4_K_M",
            ("registry.ollama.ai", "library", "llama3.2", "1b-instruct-q4_K_M"),
        ),
        ("jdoe/tiny:v2", ("registry.ollama.ai", "jdoe", "tiny", "v2")),
        ("localhost:5000/jdoe/tiny", ("localhost:5000", "jdoe", "tiny", "latest")),
        ("http://localhost:5000/jdoe/tiny", ("localhost:5000", "jdoe", "tiny", "latest")),
        ("gpt-3.5-turbo", ("registry.ollama.ai", "library", "gpt-3.5-turbo", "latest")),
        ("_x/_y:_z", ("registry.ollama.ai", "_x", "_y", "_z")),
    ],
)
def test_valid_names_parse_into_parts_with_defaults(raw: str, parts: tuple[str, ...]) -> None:
    assert parse_name(raw).parts == parts


@pytest.mark.parametrize(
    "raw",
    [
        "a/b/c/d",  # host "a/b"
        "tiny:",  # empty tag
        "-tiny",
        ".tiny",
        "my.ns/tiny",  # "." not allowed in a namespace
        "tiny:v1:extra",  # model "tiny:v1"
        "/m",
        "ns/",
        ":t",
        "",
        "x@sha256:" + HEX,  # digests are not supported
        "tïny",  # ASCII only
        "a" * 81,
        "m:" + "t" * 81,
        "x/" + "n" * 81 + "/m",
        "h" * 351 + "/n/m",
        "../../etc/passwd",
        "a/../b",
    ],
)
def test_invalid_names_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidName, match="invalid model name"):
        parse_name(raw)
    assert not is_valid_name(raw)


def test_length_limits_are_inclusive() -> None:
    assert parse_name("a" * 80).model == "a" * 80
    assert parse_name("m:" + "t" * 80).tag == "t" * 80
    assert parse_name("h" * 350 + "/n/m").host == "h" * 350


def test_scheme_is_kept_for_pull_and_push() -> None:
    assert parse_name("http://localhost:5000/jdoe/tiny").scheme == "http"
    assert parse_name("localhost:5000/jdoe/tiny").scheme == "https"


@pytest.mark.parametrize(
    ("raw", "short", "full"),
    [
        ("llama3.2", "llama3.2:latest", "registry.ollama.ai/library/llama3.2:latest"),
        ("jdoe/tiny:v2", "jdoe/tiny:v2", "registry.ollama.ai/jdoe/tiny:v2"),
        ("localhost:5000/jdoe/tiny", "localhost:5000/jdoe/tiny:latest", None),
        ("localhost:5000/library/tiny", "localhost:5000/library/tiny:latest", None),
        ("REGISTRY.OLLAMA.AI/library/Tiny", "Tiny:latest", None),
    ],
)
def test_display_forms(raw: str, short: str, full: str | None) -> None:
    name = parse_name(raw)
    assert name.short == short
    if full is not None:
        assert name.full == full


@pytest.mark.parametrize(
    ("raw", "file"),
    [
        ("sha256:" + HEX, "sha256-" + HEX),
        ("sha256-" + HEX, "sha256-" + HEX),
        ("sha256:" + HEX.upper(), "sha256-" + HEX.upper()),
    ],
)
def test_digests_map_to_blob_file_names(raw: str, file: str) -> None:
    assert parse_digest(raw) == file


@pytest.mark.parametrize(
    "raw",
    [
        "sha256:" + HEX[:-1],
        "sha256:" + HEX + "0",
        "sha512:" + HEX,
        "sha256:" + HEX[:-1] + "g",
        "sha256:../../" + HEX[:58],
        "sha256/" + HEX,
        "",
    ],
)
def test_malformed_digests_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidDigest, match="invalid digest format"):
        parse_digest(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab.:/-_@~%\\ \n0é", max_size=40))
def test_no_name_escapes_the_manifests_directory(raw: str) -> None:
    try:
        name = parse_name(raw)
    except InvalidName:
        return
    root = Path("/models/manifests")
    path = root.joinpath(*name.parts)
    assert path.resolve().is_relative_to(root)
    assert len(path.relative_to(root).parts) == 4


_HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
# A valid digest, or one with a hostile prefix, separator, length or tail spliced in: random text
# alone almost never is a 64-digit digest, so the assertions after the parse would never run.
_DIGESTS = st.tuples(
    st.sampled_from(["sha256", "sha256", "SHA256", "../sha256", "sha512", "/sha256"]),
    st.sampled_from([":", "-", ":", "/", "", ":../"]),
    _HEX | st.text(alphabet="0123456789abcdef/.", max_size=70),
    st.sampled_from(["", "", "", "/", "/../../etc/passwd", "\n", "\x00"]),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_DIGESTS)
def test_no_digest_escapes_the_blobs_directory(parts: tuple[str, str, str, str]) -> None:
    prefix, sep, digits, tail = parts
    raw = prefix + sep + digits + tail
    valid = prefix == "sha256" and sep in ":-" and sep != "" and len(digits) == 64 and not tail
    valid = valid and re.fullmatch(r"[0-9a-fA-F]{64}", digits) is not None
    if not valid:
        with pytest.raises(InvalidDigest):
            parse_digest(raw)
        return
    file = parse_digest(raw)
    assert file == "sha256-" + digits
    assert (Path("/models/blobs") / file).parent == Path("/models/blobs")


def test_name_is_a_value() -> None:
    assert parse_name("tiny") == Name("registry.ollama.ai", "library", "tiny", "latest")
