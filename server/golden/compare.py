"""`compare`: replay a golden file against another server and score it case by case.

With `api="ollama"` each case's own request goes to /api/generate or /api/chat (logprobs on,
`num_predict` capped at one token past the golden's length). With `api="openai"` the golden's
rendered prompt goes to /v1/completions (the legacy completions route llama-server, vLLM and
llama-cpp-python serve), so the backend's template cannot differ; the resolved sampling
options are passed along, including llama.cpp's `top_k`, `min_p` and `repeat_penalty`.

Tokens are compared by their bytes (text where a backend gives no bytes). A final
end-of-generation token (a last token whose text is not at the end of the answer) is dropped
on both sides, since OpenAI-style servers do not report it. Per case: identical token
sequences, the first diverging position, agreement = common prefix / longer length, and where
both sides give logprobs, |logprob difference| at agreed positions and KL(golden || backend)
over the shared top-k alternatives, renormalized, at every position whose context is still
shared (the agreed prefix and the first divergence). Greedy cases are judged by agreement;
sampled cases draw differently by design and are judged by those distributions only.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.golden.record import GOLDEN_FORMAT, GOLDEN_VERSION, GoldenError

APIS = ("ollama", "openai")


@dataclass(frozen=True)
class Token:
    piece: bytes
    logprob: float | None
    top: dict[bytes, float]  # alternative piece -> logprob


@dataclass
class CaseResult:
    """One case's scores; `error` set when the golden or the backend had no answer."""

    index: int
    id: str
    kind: str
    greedy: bool
    golden_text: str = ""
    backend_text: str = ""
    golden_pieces: list[str] = field(default_factory=list)
    backend_pieces: list[str] = field(default_factory=list)
    first_divergence: int | None = None  # None: identical token sequences
    agreement: float | None = None  # common prefix / longer sequence, 1.0 when identical
    logprob_diffs: list[float] = field(default_factory=list)  # |golden - backend|, agreed positions
    kl: list[float] = field(default_factory=list)  # per shared-context position with >= 2 shared
    error: str | None = None

    @property
    def identical(self) -> bool:
        return self.error is None and self.first_divergence is None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "kind": self.kind,
            "greedy": self.greedy,
            "identical": self.identical,
            "first_divergence": self.first_divergence,
            "agreement": self.agreement,
            "golden_tokens": len(self.golden_pieces),
            "backend_tokens": len(self.backend_pieces),
            "max_logprob_diff": max(self.logprob_diffs, default=None),
            "mean_logprob_diff": _mean(self.logprob_diffs),
            "mean_kl": _mean(self.kl),
            "max_kl": max(self.kl, default=None),
            "golden_text": self.golden_text,
            "backend_text": self.backend_text,
            "golden_pieces": self.golden_pieces,
            "backend_pieces": self.backend_pieces,
            "logprob_diffs": self.logprob_diffs,
            "kl": self.kl,
            "error": self.error,
        }


@dataclass
class Comparison:
    golden: dict[str, Any]  # the golden's header
    backend: str
    api: str
    model: str
    cases: list[CaseResult]

    @property
    def greedy_agreement(self) -> float | None:
        """Mean token agreement over greedy cases (a failed case counts 0): what gates CI."""
        scores = [c.agreement or 0.0 for c in self.cases if c.greedy]
        return _mean(scores)

    def summary(self) -> dict[str, Any]:
        ok = [c for c in self.cases if c.error is None]
        greedy = [c for c in self.cases if c.greedy]
        kl = [k for c in ok for k in c.kl]
        diffs = [d for c in ok for d in c.logprob_diffs]
        return {
            "cases": len(self.cases),
            "errors": len(self.cases) - len(ok),
            "greedy_cases": len(greedy),
            "sampled_cases": len(self.cases) - len(greedy),
            "identical": sum(c.identical for c in self.cases),
            "greedy_identical": sum(c.identical for c in greedy),
            "greedy_agreement": self.greedy_agreement,
            "mean_logprob_diff": _mean(diffs),
            "max_logprob_diff": max(diffs, default=None),
            "mean_kl": _mean(kl),
            "max_kl": max(kl, default=None),
        }

    def passes(self, min_agreement: float) -> bool:
        agreement = self.greedy_agreement
        return agreement is None or agreement >= min_agreement

    def to_json(self) -> dict[str, Any]:
        return {
            "golden": self.golden,
            "backend": self.backend,
            "api": self.api,
            "model": self.model,
            "summary": self.summary(),
            "cases": [c.to_json() for c in self.cases],
        }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def read_golden(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the cases of a golden file (format and version checked)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not lines or lines[0].get("format") != GOLDEN_FORMAT:
        raise GoldenError(f"{path}: expected a {GOLDEN_FORMAT} header line")
    if lines[0].get("version") != GOLDEN_VERSION:
        raise GoldenError(
            f"{path}: expected golden version {GOLDEN_VERSION}, found {lines[0].get('version')}"
        )
    return lines[0], lines[1:]


def compare(
    golden: Path,
    backend: str,
    *,
    api: str = "ollama",
    model: str | None = None,
    timeout: float = 600.0,
) -> Comparison:
    """Replay every case of `golden` on the server at `backend` (base URL) and score it.

    `model` is the backend's name for the model (default: the golden's own).
    """
    if api not in APIS:
        raise GoldenError(f"api must be one of {', '.join(APIS)}, found {api!r}")
    header, cases = read_golden(golden)
    name = model or header["model"]
    base = backend.rstrip("/")
    results = []
    for case in cases:
        results.append(_compare_case(case, base, api, name, header["top_logprobs"], timeout))
    return Comparison(header, backend, api, name, results)


def _compare_case(
    case: dict[str, Any], base: str, api: str, model: str, top: int, timeout: float
) -> CaseResult:
    result = CaseResult(case["index"], case["id"], case["kind"], bool(case.get("greedy")))
    if "error" in case:
        result.error = f"the golden has no answer: {case['error']}"
        return result
    golden = _visible(_golden_tokens(case), case["text"], case["done_reason"])
    limit = len(case["ids"]) + (1 if case["done_reason"] == "stop" else 0)
    try:
        if api == "ollama":
            text, tokens, reason = _ollama(case, base, model, top, limit, timeout)
        else:
            text, tokens, reason = _openai(case, base, model, top, limit, timeout)
    except GoldenError as e:
        result.error = str(e)
        return result
    backend = _visible(tokens, text, reason)
    result.golden_text, result.backend_text = case["text"], text
    result.golden_pieces = [_show(t.piece) for t in golden]
    result.backend_pieces = [_show(t.piece) for t in backend]
    prefix = 0
    while prefix < min(len(golden), len(backend)) and golden[prefix].piece == backend[prefix].piece:
        prefix += 1
    longest = max(len(golden), len(backend))
    if prefix < longest:
        result.first_divergence = prefix
    result.agreement = prefix / longest if longest else 1.0
    for i in range(prefix):
        g, b = golden[i].logprob, backend[i].logprob
        if g is not None and b is not None:
            result.logprob_diffs.append(abs(g - b))
    for i in range(min(prefix + 1, len(golden), len(backend))):
        kl = _shared_kl(golden[i].top, backend[i].top)
        if kl is not None:
            result.kl.append(kl)
    return result


def _show(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _visible(tokens: list[Token], text: str, reason: str) -> list[Token]:
    """Without a final end-of-generation token: the last one when the answer stopped and its
    text is not the end of the answer."""
    if tokens and reason == "stop" and not text.endswith(_show(tokens[-1].piece)):
        return tokens[:-1]
    return tokens


def _shared_kl(p_top: dict[bytes, float], q_top: dict[bytes, float]) -> float | None:
    """KL(p || q) over the alternatives both sides list, each renormalized over them."""
    shared = [t for t in p_top if t in q_top]
    if len(shared) < 2:
        return None
    p = [math.exp(p_top[t]) for t in shared]
    q = [math.exp(q_top[t]) for t in shared]
    p_sum, q_sum = sum(p), sum(q)
    return max(
        0.0,
        sum(
            pi / p_sum * math.log((pi / p_sum) / (qi / q_sum))
            for pi, qi in zip(p, q, strict=True)
            if pi > 0
        ),
    )


def _piece(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    return bytes(raw) if raw else str(entry.get("token", "")).encode("utf-8")


def _golden_tokens(case: dict[str, Any]) -> list[Token]:
    return [
        Token(_piece(t), t["logprob"], {_piece(a): a["logprob"] for a in t["top_logprobs"]})
        for t in case["tokens"]
    ]


# --------------------------------------------------------------------------------------------
# Backends


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as e:
        raise GoldenError(
            f"{url}: HTTP {e.code}: {e.read().decode('utf-8', 'replace')[:500]}"
        ) from e
    except (urllib.error.URLError, OSError) as e:
        raise GoldenError(f"{url}: {e}") from e


def _ollama(
    case: dict[str, Any], base: str, model: str, top: int, limit: int, timeout: float
) -> tuple[str, list[Token], str]:
    request = case["request"]
    options = dict(request.get("options") or {}) | {"num_predict": limit}
    body = request | {
        "model": model,
        "stream": False,
        "logprobs": True,
        "top_logprobs": top,
        "options": options,
    }
    answer = _post(f"{base}/api/{case['kind']}", body, timeout)
    text = answer["message"].get("content", "") if case["kind"] == "chat" else answer["response"]
    tokens = [
        Token(
            _piece(e),
            e.get("logprob"),
            {_piece(a): a["logprob"] for a in e.get("top_logprobs", [])},
        )
        for e in answer.get("logprobs") or []
    ]
    return text, tokens, answer.get("done_reason", "")


def _openai(
    case: dict[str, Any], base: str, model: str, top: int, limit: int, timeout: float
) -> tuple[str, list[Token], str]:
    o = case["options"]
    body: dict[str, Any] = {
        "model": model,
        "prompt": case["prompt"],
        "max_tokens": limit,
        "temperature": 0.0 if case["greedy"] else o["temperature"],
        "top_p": o["top_p"],
        "top_k": o["top_k"],
        "min_p": o["min_p"],
        "repeat_penalty": o["repeat_penalty"],
        "presence_penalty": o["presence_penalty"],
        "frequency_penalty": o["frequency_penalty"],
        "logprobs": top,
    }
    if o["seed"] >= 0:
        body["seed"] = o["seed"]
    if o["stop"]:
        body["stop"] = o["stop"]
    answer = _post(f"{base}/v1/completions", body, timeout)
    choice = answer["choices"][0]
    lp = choice.get("logprobs") or {}
    pieces = lp.get("tokens") or []
    logprobs = lp.get("token_logprobs") or [None] * len(pieces)
    tops = lp.get("top_logprobs") or [None] * len(pieces)
    tokens = [
        Token(p.encode("utf-8"), lp, {a.encode("utf-8"): v for a, v in (t or {}).items()})
        for p, lp, t in zip(pieces, logprobs, tops, strict=False)
    ]
    return choice.get("text", ""), tokens, choice.get("finish_reason") or ""
