"""Record llama.cpp's mtmd image embeddings and post-image logits for tests/engine/test_vision.py.

    python tests/golden/make_vision_golden.py

Writes each text model and mmproj of tests/tiny_vision.py VARIANTS (Gemma 3 with SigLIP; LLaVA
style with CLIP and the mlp projector; F16, feature-layer and legacy-name variants) to a
temporary directory, then for each of the variant's images (tests/tiny_vision.py IMAGES): the
(n_tokens, 64) embeddings mtmd_encode_chunk gives for the Pillow-decoded pixels; and, for the
variant's prompt with an image, mtmd's text chunks and the argmax of llama.cpp's logits at every
text position after the image (the image decoded by mtmd_helper_eval_chunk_single: non-causal for
Gemma 3, causal for LLaVA). Flash attention off, llama.cpp's defaults otherwise.

Output: tests/golden/vision_tiny.json with the oracle build (tests/golden/oracle_build.py).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.models.vision import decode_image  # noqa: E402
from tests.golden.oracle_build import oracle_build  # noqa: E402
from tests.tiny_vision import (  # noqa: E402
    IMAGES,
    LOGITS_IMAGE,
    VARIANTS,
    MtmdOracle,
    Variant,
    encoded_image,
)

OUT = Path(__file__).with_name("vision_tiny.json")


def record(variant: Variant, oracle: MtmdOracle) -> dict[str, object]:
    cases = []
    for index in variant.images:
        fmt, size, mode = IMAGES[index]
        pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
        chunks = oracle.chunks("<__media__>", pixels)
        image = next(c for kind, c in chunks if kind == "image")
        emb = oracle.image_embeddings(image)
        cases.append(
            {"format": fmt, "size": list(size), "mode": mode,
             "embeddings": [[float(f"{v:.9g}") for v in row] for row in emb]}
        )  # fmt: skip
    out: dict[str, object] = {"images": cases}
    if variant.logits_prompt is not None:
        fmt, size, mode = LOGITS_IMAGE
        pixels = decode_image(encoded_image(fmt, size, seed=sum(size), mode=mode))
        chunks = oracle.chunks(variant.logits_prompt, pixels)
        after = oracle.prompt_logits(chunks)[0]
        out["logits"] = {
            "prompt": variant.logits_prompt,
            "chunks": [v if k == "text" else "image" for k, v in chunks],
            "argmax_after_image": [int(i) for i in after.argmax(-1)],
        }
    return out


def main() -> None:
    variants = {}
    with tempfile.TemporaryDirectory() as d:
        for name, variant in VARIANTS.items():
            text = variant.write_text(Path(d) / f"{name}-text.gguf")
            mmproj = variant.write_mmproj(Path(d) / f"{name}-mmproj.gguf")
            variants[name] = record(variant, MtmdOracle(text, mmproj))
    text = json.dumps({"oracle": oracle_build(), "variants": variants}, indent=1)
    # one line per list of numbers (an embedding row, a token list): a third of the lines' bytes
    text = re.sub(r"\[[-0-9.e,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
