"""`refllama golden record|compare`: the CLI over server/golden's Python API.

`add_parser(subparsers)` registers the `golden` command on the main parser; each verb's
function returns the process exit code (compare: 1 when the greedy agreement is under
--min-agreement, 2 for an unusable corpus, golden or backend).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The same values as server/golden/compare.py's APIS and record.py's DEFAULT_TOP_LOGPROBS, which
# import the engine; tests/server/test_golden.py checks they agree.
APIS = ("ollama", "openai")
DEFAULT_TOP_LOGPROBS = 5


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    golden = subparsers.add_parser("golden", help="Record golden outputs, compare other backends")
    verbs = golden.add_subparsers(dest="golden_command", required=True)

    p = verbs.add_parser("record", help="Record a JSONL corpus of requests into a golden file")
    p.add_argument("corpus", type=Path, help="JSONL of /api/generate or /api/chat requests")
    p.add_argument("-m", "--model", required=True, help="Model name in the store (OLLAMA_MODELS)")
    p.add_argument("-o", "--output", type=Path, required=True, help="Golden JSONL (appended)")
    p.add_argument("--workers", type=int, default=1, help="Local worker processes (or Ray tasks)")
    p.add_argument("--ray", metavar="ADDRESS", help="Run shards as Ray tasks on this cluster")
    p.add_argument(
        "--top-logprobs", type=int, default=DEFAULT_TOP_LOGPROBS, help="Alternatives per token"
    )
    p.add_argument("--trace", action="store_true", help="Keep the sampler trace of each token")
    p.set_defaults(func=cmd_record)

    p = verbs.add_parser("compare", help="Replay a golden file against another server")
    p.add_argument("golden", type=Path)
    p.add_argument("--backend", required=True, help="Base URL, e.g. http://127.0.0.1:11434")
    p.add_argument("--api", choices=APIS, default="ollama")
    p.add_argument("--model", help="The backend's model name (default: the golden's)")
    p.add_argument("--json", type=Path, help="Write the JSON report here")
    p.add_argument("--html", type=Path, help="Write the HTML report here")
    p.add_argument(
        "--min-agreement", type=float, default=0.0, help="Exit 1 under this greedy agreement"
    )
    p.set_defaults(func=cmd_compare)


def _progress_bar(done: int, total: int, elapsed: float) -> None:
    """`[#####-----] 10/20  50%  1.9 s/case  ETA 0:00:19` on stderr, redrawn in place."""
    width = 30
    filled = width * done // max(total, 1)
    per = elapsed / max(done, 1)
    eta = int(per * (total - done))
    percent = 100 * done // max(total, 1)
    sys.stderr.write(
        f"\r[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {percent:3d}%"
        f"  {per:.1f} s/case  ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_record(args: argparse.Namespace) -> int:
    from server.golden.record import GoldenError, record  # the engine, only when recording

    done_before: list[int] = []

    def progress(done: int, total: int, elapsed: float) -> None:
        # The ETA is from this run's pace: cases recorded before a resume took no time here.
        if not done_before:
            done_before.append(done - 1)
        ran = done - done_before[0]
        _progress_bar(done, total, elapsed * done / max(ran, 1))

    try:
        n = record(
            args.corpus,
            args.model,
            args.output,
            workers=args.workers,
            top_logprobs=args.top_logprobs,
            trace=args.trace,
            ray_address=args.ray,
            progress=progress,
        )
    except GoldenError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(f"recorded {n} case(s) into {args.output}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from server.golden.compare import compare  # the engine, only when comparing
    from server.golden.record import GoldenError
    from server.golden.report import terminal_table, write_html, write_json

    try:
        comparison = compare(args.golden, args.backend, api=args.api, model=args.model)
    except GoldenError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(terminal_table(comparison))
    if args.json is not None:
        write_json(comparison, args.json)
    if args.html is not None:
        write_html(comparison, args.html)
    if not comparison.passes(args.min_agreement):
        print(
            f"greedy agreement {comparison.greedy_agreement:.4f} is under --min-agreement "
            f"{args.min_agreement}",
            file=sys.stderr,
        )
        return 1
    return 0
