"""Record llama.cpp's embeddings of nomic-embed-text-v1.5 (F16) as golden data for
tests/engine/test_bert.py and tests/server/test_embed_api.py.

    python tests/golden/make_embed_golden.py

For each of the TEXTS below (held out: none was used while writing engine/models/bert.py): the
token ids llama.cpp's WPM tokenizer gives with [CLS]/[SEP], and llama.cpp's pooled embedding
(`Llama(embedding=True)`, pooling as the GGUF says: mean; `embed(normalize=False)`), float32
values written with 9 significant digits. llama.cpp runs with n_threads=2, n_ctx = n_batch =
n_ubatch = 2048 and no flash attention (llama-cpp-python's default).

Output: tests/golden/embed_nomic.json (header with the oracle build, then the cases).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.gguf.fetch import ZIPPED_MODELS, model_path  # noqa: E402
from tests.golden.oracle_build import oracle_build  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "embed_nomic.json"
N_CTX = 2048

TEXTS = (
    "search_query: How do I bake sourdough bread at home?",
    "search_document: Sourdough relies on wild yeast and lactic acid bacteria.",
    "clustering: quarterly revenue grew 12% year over year",
    "classification: I absolutely loved this film, the ending made me cry.",
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital and most populous city of France.",
    "What's the difference between TCP and UDP?",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5;",
    "Ünïcödé têxt with àccents and ÇÁPÍTALS gets normalised.",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 🎉🚀 and symbols ©®™ § ¶",
    "x",
    "",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "1234567890 3.14159 2.71828 -42 +7 1e10",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "A stitch in time saves nine.",
    "To be, or not to be, that is the question.",
    "Photosynthesis converts light energy into chemical energy.",
    "The stock market closed lower on Friday amid inflation fears.",
    "Neural networks are universal function approximators.",
    "Please reset my password; I can't log in.",
    "Rust's borrow checker prevents data races at compile time.",
    "The Great Wall of China is visible from low Earth orbit? That is a myth.",
    "Water boils at 100 degrees Celsius at sea level.",
    "I'm not sure whether it'll rain tomorrow, but I'd bring an umbrella.",
    "GPU, CPU, TPU, NPU: which accelerator should we buy?",
    "Once upon a time, in a land far, far away, there lived a dragon.",
    "Hyphenated-words and under_scored_words and CamelCaseWords.",
    "(parentheses) [brackets] {braces} <angles>",
    "Mrs. Smith paid $1,234.56 for the antique clock on 2024-03-01.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "naïve café résumé coöperate façade",
    "The patient presented with acute abdominal pain and fever.",
    "Kubernetes schedules pods onto nodes based on resource requests.",
    "She sells seashells by the seashore.",
    "Embeddings map text to vectors so that similar meanings are close.",
    "Matryoshka representation learning nests smaller embeddings in larger ones.",
    "The referee blew the whistle and the crowd roared.",
    "?!?!?! ... --- ***",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "The meeting has been moved to Thursday at 3 pm in room 204.",
    "Climate change is driving more frequent and intense heatwaves.",
)


def main() -> None:
    path = model_path("nomic-embed-text")
    llm = llama_cpp.Llama(
        str(path), embedding=True, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, n_threads=2,
        verbose=False,
    )  # fmt: skip
    cases = []
    for text in TEXTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        vector = llm.embed(text, normalize=False)
        cases.append({"text": text, "ids": ids, "embedding": [float(f"{x:.9g}") for x in vector]})
    header = {
        "model": ZIPPED_MODELS["nomic-embed-text"].filename,
        "sha256": ZIPPED_MODELS["nomic-embed-text"].sha256,
        "pooling_type": int(llm.pooling_type()),
        "n_ctx": N_CTX,
        "oracle": oracle_build(),
    }
    with open(GOLDEN, "w") as f:
        json.dump({"header": header, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
