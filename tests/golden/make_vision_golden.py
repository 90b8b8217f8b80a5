"""Record llama.cpp's mtmd image embeddings and post-image logits for tests/engine/test_vision.py.

    python tests/golden/make_vision_golden.py

Writes the tiny Gemma 3 text model and mmproj of tests/tiny_vision.py to a temporary directory,
then for each image of tests/tiny_vision.py IMAGES: the (16, 64) embeddings mtmd_encode_chunk
gives for the Pillow-decoded pixels; and for one prompt with an image, the argmax of llama.cpp's
logits at every text position after the image (the image decoded by mtmd_helper_eval_chunk_single,
non-causal for Gemma 3). Flash attention off, llama.cpp's defaults otherwise.

Output: tests/golden/vision_tiny.json with the oracle build (tests/golden/oracle_build.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.models.vision import decode_image  # noqa: E402
from tests.golden.oracle_build import oracle_build  # noqa: E402
from tests.tiny_vision import (  # noqa: E402
    IMAGES,
    LOGITS_IMAGE,
    LOGITS_PROMPT,
    MtmdOracle,
    encoded_image,
    write_tiny_mmproj,
    write_tiny_text,
)

OUT = Path(__file__).with_name("vision_tiny.json")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        text, mmproj = (
            write_tiny_text(Path(d) / "text.gguf"),
            write_tiny_mmproj(Path(d) / "mm.gguf"),
        )
        oracle = MtmdOracle(text, mmproj)
        cases = []
        for fmt, size, mode in IMAGES:
            pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
            chunks = oracle.chunks("<__media__>", pixels)
            image = next(c for kind, c in chunks if kind == "image")
            emb = oracle.image_embeddings(image)
            cases.append(
                {"format": fmt, "size": list(size), "mode": mode,
                 "embeddings": [[float(f"{v:.9g}") for v in row] for row in emb]}
            )  # fmt: skip
        fmt, size, mode = LOGITS_IMAGE
        pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
        chunks = oracle.chunks(LOGITS_PROMPT, pixels)
        after = oracle.prompt_logits(chunks)[0]
        logits = {
            "prompt": LOGITS_PROMPT,
            "chunks": [v if k == "text" else "image" for k, v in chunks],
            "argmax_after_image": [int(i) for i in after.argmax(-1)],
        }
    OUT.write_text(
        json.dumps({"oracle": oracle_build(), "images": cases, "logits": logits}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
