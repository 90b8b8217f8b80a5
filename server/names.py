"""Model names and blob digests, parsed and validated as Ollama does.

Names follow Ollama `types/model/name.go` (spec/ollama-api.md §12): `[scheme://][host/][namespace/]
model[:tag]`, parsed from the right, defaults `registry.ollama.ai/library/…:latest`, ASCII only.
A valid part never contains `/` and never starts with `.`, so a name's path under `manifests/`
cannot escape the models directory; digests are checked against `sha256[:-]<64 hex>` for the
same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.errors import InvalidDigest, InvalidName

DEFAULT_SCHEME = "https"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# (first character, other characters, max length) per part, §12.2.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG = _MODEL
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class Name:
    """A parsed, valid model name with defaults filled in (spelling preserved)."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = DEFAULT_SCHEME

    @property
    def full(self) -> str:
        """`host/namespace/model:tag`, as in capability errors."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def short(self) -> str:
        """The shortest display form, always with the tag (§12.3)."""
        if self.host.lower() != DEFAULT_HOST:
            return self.full
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The manifest path components under `manifests/`."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """The registry repository path, `namespace/model`."""
        return f"{self.namespace}/{self.model}"


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    """Split at the last `sep`; an empty side becomes "!" so that it fails validation."""
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return (s[:i] or "!"), (s[i + len(sep) :] or "!"), True


def parse_name(raw: str) -> Name:
    """Parse and validate `raw` (no trimming: callers trim where Ollama does).

    Raises InvalidName with the text `invalid model name`; endpoints that word it differently
    catch it and re-raise.
    """
    s = raw
    tag = model = namespace = host = ""
    scheme = DEFAULT_SCHEME
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_last(s, ":")
    s, model, promised = _cut_last(s, "/")
    if not promised:
        model = s
    else:
        s, namespace, promised = _cut_last(s, "/")
        if not promised:
            namespace = s
        else:
            before, sep, after = s.partition("://")
            if sep:
                scheme, host = before, after
            else:
                host = s
    name = Name(
        host=host or DEFAULT_HOST,
        namespace=namespace or DEFAULT_NAMESPACE,
        model=model,
        tag=tag or DEFAULT_TAG,
        scheme=scheme,
    )
    checks = ((_HOST, name.host), (_NAMESPACE, name.namespace), (_MODEL, name.model))
    if not all(p.fullmatch(v) for p, v in (*checks, (_TAG, name.tag))):
        raise InvalidName(raw)
    return name


def is_valid_name(raw: str) -> bool:
    try:
        parse_name(raw)
    except InvalidName:
        return False
    return True


def parse_digest(raw: str) -> str:
    """`sha256:<hex>` or `sha256-<hex>` (either case) -> the blob file name `sha256-<hex>`.

    The hex keeps its case, as Ollama's path does: only lowercase names ever exist on disk.
    """
    m = _DIGEST.fullmatch(raw)
    if m is None:
        raise InvalidDigest(raw)
    return f"sha256-{m.group(1)}"
