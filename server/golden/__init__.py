"""Golden outputs for other backends: record the reference's answers, replay them elsewhere.

`record` runs a JSONL corpus of /api/generate or /api/chat requests through refllama in-process
(the server's own preflight, template and decode path) and writes a versioned golden JSONL
(format in server/golden/record.py). `compare` replays a golden against any server with
Ollama's or OpenAI's API and scores it per case (server/golden/compare.py); report.py renders
the terminal table, the JSON and the offline HTML report. command.py is the `refllama golden`
CLI. Imports engine/ and server/ modules below the app; only the CLI imports this package.
"""

from server.golden.compare import CaseResult, Comparison, compare
from server.golden.record import GOLDEN_FORMAT, GOLDEN_VERSION, GoldenError, record

__all__ = [
    "GOLDEN_FORMAT",
    "GOLDEN_VERSION",
    "CaseResult",
    "Comparison",
    "GoldenError",
    "compare",
    "record",
]
