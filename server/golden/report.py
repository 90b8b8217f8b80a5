"""Reports of a `Comparison`: a fixed-width terminal table, JSON, and one offline HTML page.

The HTML page needs no network and no script: a summary table, an inline SVG plot with one
bar per case (the golden's length in grey, the agreed prefix in green, a red mark at the
first divergence), and per case the token-level diff (agreed tokens, then the golden's and
the backend's continuations side by side).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from server.golden.compare import CaseResult, Comparison


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def terminal_table(comparison: Comparison) -> str:
    """One row per case, then the summary lines."""
    rows = [("case", "kind", "mode", "same", "diverge", "agree", "|dlogp|", "KL", "note")]
    for c in comparison.cases:
        j = c.to_json()
        rows.append(
            (
                c.id[:16],
                c.kind,
                "greedy" if c.greedy else "sampled",
                "yes" if c.identical else "no",
                "-" if c.first_divergence is None else str(c.first_divergence),
                _num(c.agreement, 3),
                _num(j["mean_logprob_diff"]),
                _num(j["mean_kl"], 5),
                (c.error or "")[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    s = comparison.summary()
    lines += [
        "",
        f"backend {comparison.backend} ({comparison.api}), model {comparison.model}",
        f"cases {s['cases']} (greedy {s['greedy_cases']}, sampled {s['sampled_cases']}, "
        f"errors {s['errors']}); identical {s['identical']}/{s['cases']}",
        f"greedy: identical {s['greedy_identical']}/{s['greedy_cases']}, "
        f"mean token agreement {_num(s['greedy_agreement'])}",
        f"agreed positions: mean |logprob diff| {_num(s['mean_logprob_diff'])}, "
        f"max {_num(s['max_logprob_diff'])}; KL over shared top-k: mean "
        f"{_num(s['mean_kl'], 6)}, max {_num(s['max_kl'], 6)}",
        "sampled cases are judged by their distributions (logprobs, KL), not by their draws",
    ]
    return "\n".join(lines)


def write_json(comparison: Comparison, path: Path) -> None:
    path.write_text(json.dumps(comparison.to_json(), indent=1, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------
# HTML

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; font-size: 14px; }
.tok { font-family: monospace; white-space: pre-wrap; border: 1px solid #ddd; margin: 0 1px; }
.same { background: #dfd; } .gold { background: #fdd; } .back { background: #ddf; }
.case { margin: 1.5em 0; border-top: 1px solid #aaa; padding-top: .5em; }
.bad { color: #b00; }
"""


def _svg_plot(cases: list[CaseResult]) -> str:
    """One horizontal bar per case: golden length (grey), agreed prefix (green), divergence."""
    longest = max([len(c.golden_pieces) for c in cases] + [len(c.backend_pieces) for c in cases])
    longest = max(longest, 1)
    left, width, row = 110, 600, 16
    height = row * len(cases) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}"'
        ' role="img" aria-label="first divergence position per case">'
    ]
    scale = width / longest
    for i, c in enumerate(cases):
        y = 10 + i * row
        parts.append(
            f'<text x="{left - 6}" y="{y + 11}" font-size="11" text-anchor="end">'
            f"{html.escape(c.id[:14])}</text>"
        )
        parts.append(
            f'<rect x="{left}" y="{y}" width="{len(c.golden_pieces) * scale:.1f}" height="12"'
            ' fill="#ccc"/>'
        )
        agreed = len(c.golden_pieces) if c.first_divergence is None else c.first_divergence
        if c.error is None:
            parts.append(
                f'<rect x="{left}" y="{y}" width="{agreed * scale:.1f}" height="12" fill="#4a4"/>'
            )
        if c.first_divergence is not None:
            x = left + c.first_divergence * scale
            parts.append(f'<rect x="{x - 1.5:.1f}" y="{y - 2}" width="3" height="16" fill="#c22"/>')
    axis_y = 10 + len(cases) * row + 4
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#444"/>'
    )
    for k in range(6):
        pos = round(longest * k / 5)
        x = left + pos * scale
        parts.append(
            f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="10" text-anchor="middle">{pos}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _tokens(pieces: list[str], css: str) -> str:
    return "".join(f'<span class="tok {css}">{html.escape(p)}</span>' for p in pieces)


def _case_html(c: CaseResult) -> str:
    j = c.to_json()
    mode = "greedy" if c.greedy else "sampled (judged by distributions)"
    head = (
        f"<h3>case {html.escape(c.id)} &middot; {c.kind} &middot; {mode}</h3>"
        f"<p>identical: {'yes' if c.identical else '<b class=bad>no</b>'}; first divergence: "
        f"{'-' if c.first_divergence is None else c.first_divergence}; agreement: "
        f"{_num(c.agreement, 3)}; mean |logprob diff| {_num(j['mean_logprob_diff'])}; "
        f"mean KL {_num(j['mean_kl'], 6)}</p>"
    )
    if c.error is not None:
        return f'<div class="case">{head}<p class="bad">{html.escape(c.error)}</p></div>'
    cut = len(c.golden_pieces) if c.first_divergence is None else c.first_divergence
    body = f"<p>{_tokens(c.golden_pieces[:cut], 'same')}</p>"
    if c.first_divergence is not None:
        body += (
            "<table><tr><th>golden continues</th><th>backend continues</th></tr><tr>"
            f"<td>{_tokens(c.golden_pieces[cut:], 'gold')}</td>"
            f"<td>{_tokens(c.backend_pieces[cut:], 'back')}</td></tr></table>"
        )
    return f'<div class="case">{head}{body}</div>'


def render_html(comparison: Comparison) -> str:
    s = comparison.summary()
    summary: list[tuple[str, Any]] = [
        ("backend", f"{comparison.backend} ({comparison.api}), model {comparison.model}"),
        ("golden", f"{comparison.golden['model']} {comparison.golden['model_digest']}"),
        ("engine", json.dumps(comparison.golden["engine"])),
        ("cases", f"{s['cases']} (greedy {s['greedy_cases']}, sampled {s['sampled_cases']})"),
        ("errors", s["errors"]),
        ("identical", f"{s['identical']} / {s['cases']}"),
        ("greedy mean token agreement", _num(s["greedy_agreement"])),
        (
            "mean / max |logprob diff|",
            f"{_num(s['mean_logprob_diff'])} / {_num(s['max_logprob_diff'])}",
        ),  # fmt: skip
        ("mean / max KL (shared top-k)", f"{_num(s['mean_kl'], 6)} / {_num(s['max_kl'], 6)}"),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary
    )
    cases = "".join(_case_html(c) for c in comparison.cases)
    plot = _svg_plot(comparison.cases) if comparison.cases else "<p>no cases</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>refllama golden comparison</title><style>{_STYLE}</style></head><body>"
        "<h1>refllama golden comparison</h1>"
        f"<table>{rows}</table>"
        "<h2>First divergence per case</h2>"
        "<p>Grey: golden length in tokens; green: tokens the backend agrees on; red mark: "
        "first diverging token.</p>"
        f"{plot}<h2>Cases</h2>{cases}</body></html>\n"
    )


def write_html(comparison: Comparison, path: Path) -> None:
    path.write_text(render_html(comparison), encoding="utf-8")
