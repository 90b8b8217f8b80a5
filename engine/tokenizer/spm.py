"""llama.cpp's SentencePiece (SPM) tokenizer, `llm_tokenizer_spm_session`, step for step.

Spec: gguf-and-models.md section 6.5. A raw-text fragment (the text between special tokens,
engine/tokenizer/hf.py `_partitioner`) has its spaces replaced by ▁, and a ▁ put in front
when `add_space_prefix` is set (llama.cpp prefixes the first fragment and every fragment after a
special token, which is every raw fragment). Then:

1. Every character is a symbol.
2. Every pair of neighbouring symbols whose concatenation is a token is a candidate, ranked by
   that token's score, best first; equal scores go to the leftmost pair.
3. The best candidate merges (its right symbol joins its left one), unless one of its symbols
   has changed since it was ranked; the merged symbol's new pairs with its neighbours become
   candidates. Repeat until no candidate is left.
4. Each remaining symbol that is a token is output as such; any other (a character that is not
   in the vocabulary) is spelled by its UTF-8 bytes as `<0xXX>` tokens.

Building this costs nothing but two lists, where an HF BPE equivalent needed every split of every
token as a merge (Gemma 3: 515K merges, over 2 s of its load).
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from engine.errors import TokenizerError
from engine.tokenizer.vocab import SPACE_MARK, Vocab


class Spm:
    """The SPM merge loop over one vocabulary; `encode` takes one raw-text fragment."""

    def __init__(self, vocab: Vocab) -> None:
        if vocab.scores is None:
            raise TokenizerError("tokenizer.ggml.scores is missing; the llama (SPM) model needs it")
        self.ids = vocab.ids
        self.scores: list[float] = vocab.scores.astype(float).tolist()
        self.prefix = SPACE_MARK if vocab.add_space_prefix else ""
        # llama.cpp `byte_to_token`: the `<0xXX>` token, else the byte's one-character token
        self.byte_ids = [
            self.ids.get(f"<0x{b:02X}>", self.ids.get(chr(b)) if b < 0x80 else None)
            for b in range(256)
        ]
        self.unk_id = vocab.unk_id

    def encode(self, fragment: str) -> list[int]:
        text = self.prefix + fragment.replace(" ", SPACE_MARK)
        ids, scores = self.ids, self.scores
        n = len(text)
        if n == 0:
            return []
        # Symbol i spans text[i : i + size[i]]: a merge grows its left symbol and empties its
        # right one, so a symbol keeps the index of its first character.
        size = [1] * n
        after = [*range(1, n), -1]
        before = list(range(-1, n - 1))
        # Candidates (-score, left, right, merged size): the heap pops the best score, then the
        # leftmost pair, as llama.cpp's priority queue does. At most one entry per left symbol
        # is current (its right neighbour and both sizes as they are now), so the rest of the
        # tuple never decides between current ones.
        queue = []
        for i in range(n - 1):
            token = ids.get(text[i : i + 2])
            if token is not None:
                queue.append((-scores[token], i, i + 1, 2))
        heapify(queue)
        while queue:
            _, left, right, merged = heappop(queue)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != merged:
                continue  # a symbol of this pair has changed since it was ranked
            size[left], size[right] = merged, 0
            nxt = after[left] = after[right]
            if nxt >= 0:
                before[nxt] = left
                token = ids.get(text[left : nxt + size[nxt]])
                if token is not None:
                    heappush(queue, (-scores[token], left, nxt, merged + size[nxt]))
            prev = before[left]
            if prev >= 0:
                token = ids.get(text[prev : left + merged])
                if token is not None:
                    heappush(queue, (-scores[token], prev, left, size[prev] + merged))
        out: list[int] = []
        i = 0
        while i >= 0:
            piece = text[i : i + size[i]]
            token = ids.get(piece)
            if token is None:
                self._spell(piece, out)
            else:
                out.append(token)
            i = after[i]
        return out

    def _spell(self, char: str, out: list[int]) -> None:
        """A character outside the vocabulary as its bytes' tokens. Where one is missing,
        llama.cpp throws; this gives the unknown token, one for a run of such characters."""
        byte_ids = [self.byte_ids[b] for b in char.encode()]
        if None not in byte_ids:
            out.extend(byte_ids)  # type: ignore[arg-type]
        elif self.unk_id is None:
            raise TokenizerError(f"{char!r} has no byte token and the vocabulary no unknown token")
        elif not out or out[-1] != self.unk_id:
            out.append(self.unk_id)
