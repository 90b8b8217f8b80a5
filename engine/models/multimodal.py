"""A text model plus its vision projector: prompts with images, as llama.cpp's mtmd builds them.

Each image becomes its projector type's begin marker, its n_tokens embedding rows and its end
marker (mtmd.cpp init_vision: `<start_of_image>` ... `<end_of_image>` for gemma3, nothing around
the rows for mlp / LLaVA 1.5), in place of the `[img-N]` marker the chat template left in the
prompt text. The rows attend to each other both ways for gemma3 and causally for mlp
(mtmd_decode_use_non_causal).

The image rows are labelled in the token list with ids >= n_vocab, one range per distinct image
(the same bytes get the same labels), so a KV cache prefix holding an image is reused only for
that image. `eval` takes such lists: text runs go through the decoder as tokens, each image run
through `Model.eval_embeddings` in one pass; a run that starts inside an image (the cache holds
only part of it) is re-evaluated from the image's first row.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.errors import GGUFError
from engine.models.decoder import DEFAULT_NUM_BATCH, Model, Probe
from engine.models.kvcache import KVCache
from engine.models.vision import VisionEncoder

Array = npt.NDArray[np.float32]
IMAGE_MARKER = re.compile(r"\[img-(\d+)\]")
KEEP_IMAGES = 64  # encoded images kept for prefix reuse (least recently used dropped)


@dataclass(frozen=True)
class ImagePlacement:
    """How mtmd puts one image's rows into the prompt."""

    begin: str  # text tokenized before the rows ("" for none)
    end: str  # text tokenized after the rows
    bidirectional: bool  # the rows see each other both ways (mtmd_decode_use_non_causal)


# per projector type (engine/models/vision.py SUPPORTED_PROJECTORS)
PLACEMENT = {
    "gemma3": ImagePlacement("<start_of_image>", "<end_of_image>", bidirectional=True),
    "mlp": ImagePlacement("", "", bidirectional=False),
}


class VisionLanguageModel:
    """`Model`'s API (attributes delegate to the text model) plus `prompt_ids` with images."""

    def __init__(self, model: Model, encoder: VisionEncoder) -> None:
        if encoder.n_embd_text != model.config.n_embd:
            raise GGUFError(
                f"projector output width {encoder.n_embd_text} does not match the text model's "
                f"n_embd {model.config.n_embd}"
            )
        self.model = model
        self.encoder = encoder
        self.placement = PLACEMENT[encoder.config.projector_type]
        self._lock = threading.Lock()
        self._by_digest: OrderedDict[str, int] = OrderedDict()  # digest -> image index
        self._rows: dict[int, Array] = {}  # image index -> (n_tokens, D)
        self._next = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)

    def _label_base(self, index: int) -> int:
        return self.model.n_vocab + index * self.encoder.n_tokens

    def image_labels(self, data: bytes) -> list[int]:
        """Encode an image (once per distinct bytes); its row labels. Raises InvalidImage."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            index = self._by_digest.get(digest)
            if index is not None:
                self._by_digest.move_to_end(digest)
        if index is None:
            rows = self.encoder.encode(data)  # (n_tokens, D)
            with self._lock:
                index = self._next
                self._next += 1
                self._by_digest[digest] = index
                self._rows[index] = rows
                while len(self._by_digest) > KEEP_IMAGES:
                    _, old = self._by_digest.popitem(last=False)
                    del self._rows[old]
        base = self._label_base(index)
        return list(range(base, base + self.encoder.n_tokens))

    def prompt_ids(self, text: str, images: Sequence[bytes]) -> list[int]:
        """Token ids of `text` with each `[img-N]` marker replaced by image N's markers and rows.

        BOS is added per the model at the start, as mtmd_tokenize does (before the first image
        row too when the prompt starts with an image). Raises InvalidImage.
        """
        tok = self.model.tokenizer
        ids: list[int] = []
        pos = 0
        for m in IMAGE_MARKER.finditer(text):
            n = int(m.group(1))
            if n >= len(images):
                continue
            ids += tok.encode(text[pos : m.start()], add_special=not ids, parse_special=True)
            if self.placement.begin:  # tokenized on its own, as mtmd's add_text(img_beg)
                ids += tok.encode(self.placement.begin, add_special=not ids, parse_special=True)
            ids += self.image_labels(images[n])
            if self.placement.end:
                ids += tok.encode(self.placement.end, add_special=False, parse_special=True)
            pos = m.end()
        ids += tok.encode(text[pos:], add_special=not ids, parse_special=True)
        return ids

    def _image_of(self, label: int) -> tuple[int, int]:
        """(image index, row) of an image label."""
        return divmod(label - self.model.n_vocab, self.encoder.n_tokens)

    def eval(
        self,
        tokens: Sequence[int] | npt.NDArray[np.int64],
        cache: KVCache,
        num_batch: int = DEFAULT_NUM_BATCH,
        last_only: bool = False,
        *,
        probe: Probe | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Array:
        """Model.eval over a token list that may hold image labels (see the module docstring)."""
        ids = [int(t) for t in tokens]
        V = self.model.n_vocab
        if ids and ids[0] >= V:
            index, row = self._image_of(ids[0])
            held = cache.tokens[cache.n_past - row :] if 0 < row <= cache.n_past else []
            if held == list(range(ids[0] - row, ids[0])):
                # the cache holds this image's first rows: redo the image whole, in one pass
                ids = held + ids
                cache.truncate(cache.n_past - row)
        outs: list[Array] = []
        start = 0
        while start < len(ids):
            image = ids[start] >= V
            end = start
            while end < len(ids) and (ids[end] >= V) == image:
                if image and self._image_of(ids[end])[0] != self._image_of(ids[start])[0]:
                    break
                end += 1
            run = ids[start:end]
            if image:
                index, row = self._image_of(run[0])
                with self._lock:
                    rows = self._rows.get(index)
                if rows is None:
                    raise ValueError(f"image rows {run[0]}.. are no longer held; re-send the image")
                outs.append(
                    self.model.eval_embeddings(
                        rows[row : row + len(run)], run, cache,
                        bidirectional=self.placement.bidirectional, last_only=last_only,
                        cancelled=cancelled,
                    )
                )  # fmt: skip
            else:
                outs.append(
                    self.model.eval(
                        run, cache, num_batch, last_only, probe=probe, cancelled=cancelled
                    )
                )
            start = end
        return outs[-1] if last_only else np.concatenate(outs)
