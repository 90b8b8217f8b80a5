"""How closely a run's logits follow a golden case recorded from llama.cpp (tests/golden/).

A case holds the prompt ids, llama.cpp's greedy continuation, and per position of
prompt + continuation[:-1] llama.cpp's argmax and top-20 (ids, logits). Per position:
* top-1: the run's argmax equals llama.cpp's;
* KL(llama.cpp || run) over llama.cpp's top-20 ids: both sides' logits at those ids are softmaxed
  over just those ids (llama.cpp's are stored for them only), then sum p_ref (log p_ref - log p);
and per case, greedy: the run's argmax at the last prompt position and at every continuation
position is llama.cpp's next token, i.e. the run's greedy continuation would be identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    top1: float  # fraction of positions
    kl: float  # mean over positions
    greedy: int  # cases whose whole greedy continuation is identical
    cases: int


def compare(logits: np.ndarray, case: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """logits (T, V) for case's prompt + continuation[:-1] -> (top-1 (T,), KL (T,), greedy)."""
    logits = np.asarray(logits, dtype=np.float64)
    top_ids = np.array(case["top_ids"])
    ref = np.array(case["top_logits"], dtype=np.float64)
    ours = np.take_along_axis(logits, top_ids, axis=1)
    log_p = ref - ref.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    log_q = ours - ours.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(1)
    argmax = logits.argmax(1)
    top1 = argmax == np.array(case["argmax"])
    n = len(case["prompt"])
    greedy = bool((argmax[n - 1 :] == np.array(case["continuation"])).all())
    return top1, kl, greedy


def summarize(results: list[tuple[np.ndarray, np.ndarray, bool]]) -> Agreement:
    return Agreement(
        top1=float(np.concatenate([r[0] for r in results]).mean()),
        kl=float(np.concatenate([r[1] for r in results]).mean()),
        greedy=sum(r[2] for r in results),
        cases=len(results),
    )
