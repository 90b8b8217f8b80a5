"""The offline HTML page of `refllama inspect --html`: the logit-lens grid and attention heatmaps.

One self-contained file: an HTML table for the grid (a row per layer, a column per position, each
cell the lens's top token, shaded by its probability, the top few in its tooltip) and one inline
SVG per chosen head (query rows, key columns, shaded by weight). No script and no external
resource, so it opens from disk anywhere, and no plotting dependency is needed.
"""

from __future__ import annotations

from html import escape

from engine.models.inspection import Inspection

CELL = 14  # heatmap pixels per (query, key) pair
STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table.lens { border-collapse: collapse; font: 12px ui-monospace, monospace; }
table.lens td, table.lens th { border: 1px solid #ddd; padding: 2px 4px; white-space: pre; }
table.lens th { background: #f4f4f4; }
.heads { display: flex; flex-wrap: wrap; gap: 10px; }
figure.head { margin: 0; text-align: center; font-size: 11px; }
"""


def _show(piece: str) -> str:
    """A token's text, escapes visible (repr) and spaces as ␣, so a space token is not blank."""
    return escape(repr(piece)[1:-1].replace(" ", "\u2423"))


def _lens_grid(seen: Inspection) -> list[str]:
    T = len(seen.tokens)
    out = ['<table class="lens" id="lens">', "<tr><th>layer</th>"]
    out += [f'<th class="input">{_show(p)}</th>' for p in seen.pieces]
    out.append("</tr>")
    for view in reversed(seen.layers):  # the output at the top, as the residual stream rises
        out.append(f"<tr><th>{view.layer}</th>")
        for t in range(T):
            pairs = zip(view.lens_top[t], view.lens_prob[t], strict=True)
            tip = "\n".join(f"{seen.lens_pieces[int(i)]!r} {p:.3f}" for i, p in pairs)
            top, prob = int(view.lens_top[t, 0]), float(view.lens_prob[t, 0])
            out.append(
                f'<td class="cell" data-layer="{view.layer}" data-pos="{t}" '
                f'style="background: rgba(40, 110, 220, {prob:.3f})" title="{escape(tip)}">'
                f"{_show(seen.lens_pieces[top])}</td>"
            )
        out.append("</tr>")
    out.append("</table>")
    return out


def _heatmap(seen: Inspection, layer: int, head: int) -> str:
    w = seen.attention[(layer, head)]  # (T, S)
    T, S = w.shape
    rects = [
        f'<rect x="{s * CELL}" y="{t * CELL}" width="{CELL}" height="{CELL}" '
        f'fill-opacity="{w[t, s]:.3f}"><title>{_show(seen.pieces[t])} -&gt; '
        f"{_show(seen.pieces[s])}: {w[t, s]:.3f}</title></rect>"
        for t in range(T)
        for s in range(S)
    ]
    return (
        f'<figure class="head" data-layer="{layer}" data-head="{head}">'
        f'<svg width="{S * CELL}" height="{T * CELL}" fill="#c0392b">'
        f'<rect width="{S * CELL}" height="{T * CELL}" fill="#fafafa"/>{"".join(rects)}</svg>'
        f"<figcaption>layer {layer} head {head}</figcaption></figure>"
    )


def render_page(seen: Inspection, prompt: str, model_name: str) -> str:
    """The whole page as one string."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>refllama inspect: {escape(model_name)}</title><style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{escape(model_name)}</h1>",
        f'<p>Prompt: <code id="prompt">{escape(prompt)}</code>, {len(seen.tokens)} tokens.</p>',
        "<h2>Logit lens</h2>",
        "<p>Each layer's output through the output norm and matrix: the most likely next token at"
        " every position, shaded by its probability (hover for the top tokens).</p>",
        *_lens_grid(seen),
        "<h2>Attention</h2>",
        "<p>Rows are query positions, columns the keys they attend to (softmax weights).</p>",
        '<div class="heads" id="attention">',
        *(_heatmap(seen, il, h) for il, h in sorted(seen.attention)),
        "</div></body></html>",
    ]
    return "\n".join(parts) + "\n"
