"""Agreement of llama-cpp-python's OpenAI-compatible server with a golden of this engine.

    python tests/golden/llama_cpp_server_agreement.py [OUT_DIR]

Records the 20 greedy SmolLM2 cases of tests/server/test_golden.py (10 /api/generate prompts,
the same 10 as /api/chat, 10 tokens each) with `refllama golden record`'s Python API on two
workers, starts `python -m llama_cpp.server` on a free loopback port (one thread), replays the
golden against it with `golden compare --api openai`, and prints the terminal table, the
summary, the oracle build and the CPU. The JSON report goes to OUT_DIR (default: a temporary
directory). These are the numbers in the README's golden section.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from oracle_build import oracle_build  # noqa: E402

from engine.gguf.fetch import model_path  # noqa: E402
from server.golden.compare import compare  # noqa: E402
from server.golden.record import record  # noqa: E402
from server.golden.report import terminal_table, write_json  # noqa: E402
from server.store import Store  # noqa: E402
from tests.server.conftest import free_port, wait_http  # noqa: E402
from tests.server.test_golden import corpus_lines  # noqa: E402


def main(out_dir: Path) -> None:
    model = model_path("smollm2")
    store = Store(out_dir / "models")
    store.create_from_gguf("smollm2", model)
    corpus = out_dir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in corpus_lines()))
    golden = out_dir / "golden.jsonl"
    record(corpus, "smollm2", golden, store_root=store.root, workers=2)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/models", proc, timeout=120)
        result = compare(golden, url, api="openai")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    write_json(result, out_dir / "llama_cpp_server.json")
    sys.stdout.write(terminal_table(result) + "\n")
    sys.stdout.write(json.dumps(result.summary(), indent=1) + "\n")
    sys.stdout.write(json.dumps(oracle_build()) + "\n")
    for c in result.cases:
        sys.stdout.write(f"{c.id}: diverge {c.first_divergence} agree {c.agreement}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="agree-")))
