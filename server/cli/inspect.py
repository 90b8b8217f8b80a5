"""`refllama inspect MODEL "prompt"`: one prompt's forward pass, layer by layer.

Runs locally, in this process, on a model name resolved through the store (OLLAMA_MODELS) or on
a .gguf path: the per-layer arrays behind it (hidden states, attention weights) are far larger
than anything the Ollama API carries, and Ollama has no such verb to be compatible with, so no
server route is added for it. Prints a table (residual and sub-layer norms, the logit lens's top
tokens at one position); `--html FILE` writes an offline page (server/cli/inspect_page.py). The
engine is imported only when the verb runs, so the other client verbs stay light.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models.inspection import Inspection


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "inspect", help="Show a prompt's forward pass layer by layer (runs locally)"
    )
    p.add_argument("model", help="Model name in the store (OLLAMA_MODELS) or a .gguf path")
    p.add_argument("prompt", help="Prompt text, tokenized as is (no chat template)")
    p.add_argument("--top", type=int, default=3, help="Logit-lens tokens per layer (default 3)")
    p.add_argument(
        "--position", type=int, default=-1, help="Token position for the table (default: last)"
    )
    p.add_argument(
        "--heads",
        default="all",
        help='Attention heads for --html: "all", or LAYER:HEAD pairs, e.g. "0:1,29:8"',
    )
    p.add_argument("--html", type=Path, help="Write an offline HTML page with heatmaps here")
    p.set_defaults(func=cmd_inspect)


def _model_path(name: str) -> Path:
    if name.endswith(".gguf") and Path(name).is_file():
        return Path(name)
    from server.store import Store

    return Store.from_env().resolve(name).gguf_path


def _heads(spec: str, n_layer: int, n_head: int) -> list[tuple[int, int]]:
    if spec == "all":
        return [(il, h) for il in range(n_layer) for h in range(n_head)]
    pairs = []
    for item in spec.split(","):
        layer, sep, head = item.partition(":")
        if not sep or not layer.strip().isdigit() or not head.strip().isdigit():
            raise ValueError(f'--heads: expected "all" or LAYER:HEAD pairs, got {item!r}')
        pairs.append((int(layer), int(head)))
    return pairs


def table(seen: Inspection, position: int) -> list[str]:
    """The per-layer lines `inspect` prints for one token position."""
    t = position % len(seen.tokens)
    lines = [
        f"position {t}: {seen.pieces[t]!r} (token {seen.tokens[t]}) of {len(seen.tokens)}",
        f"{'layer':>5}  {'|h|':>8}  {'|attn|':>8}  {'|ffn|':>8}  logit lens (top tokens, p)",
        f"{'emb':>5}  {seen.embedding_norm[t]:8.2f}",
    ]
    for view in seen.layers:
        norm = float((view.hidden[t].astype("float64") ** 2).sum() ** 0.5)
        pairs = zip(view.lens_top[t], view.lens_prob[t], strict=True)
        pieces = [f"{seen.lens_pieces[int(i)]!r} {p:.3f}" for i, p in pairs]
        lines.append(
            f"{view.layer:>5}  {norm:8.2f}  {view.attn_norm[t]:8.2f}  {view.ffn_norm[t]:8.2f}  "
            + "  ".join(pieces)
        )
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    import engine  # the engine, only when inspecting
    from engine.errors import EngineError
    from engine.models.inspection import inspect
    from server.cli.inspect_page import render_page

    try:
        model = engine.load(_model_path(args.model))
        ids = model.tokenize(args.prompt)
        heads = _heads(args.heads, model.config.n_layer, model.config.n_head) if args.html else []
        seen = inspect(model, ids, heads=heads, top=args.top)
    except (ValueError, OSError, EngineError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    for line in table(seen, args.position):
        print(line)
    if args.html:
        args.html.write_text(render_page(seen, args.prompt, model.path.name), encoding="utf-8")
    return 0
