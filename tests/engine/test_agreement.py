"""The fast engine's decode path (engine/models/decoder.py, as engine.generate runs it) and the
Qwen2.5-Coder prefill against llama.cpp.

Decode: the prompt is prefilled into a cache in one `Model.eval`, then every continuation token
goes through a one-token step on that cache, as the server decodes; all rows are
scored (tests/agreement.py) against llama.cpp evaluating every token alone
(tests/golden/forward_{smollm2,gemma3}_tokenwise.json, tests/golden/make_exact_golden.py).
The live test re-runs llama.cpp over every case of those goldens.

Bounds are the measured value minus a margin: top-1 0.5 percentage points, mean KL x1.5, greedy
2 cases. The engine's logits are the same bits on any x86-64 machine (README, Determinism), so
the margin is for legitimate numerics changes, not for noise. Measured on an AMD EPYC (AVX512,
2 cores); goldens from llama-cpp-python 0.3.36, AVX512 build (the goldens' headers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.models.decoder import Model
from tests.agreement import Agreement, compare, summarize
from tests.conftest import needs_oracle
from tests.golden.oracle_build import isa_mismatch

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _cases(name: str) -> list[dict]:
    return json.loads((GOLDEN / f"forward_{name}.json").read_text())["cases"]


def decode_rows(model: Model, cases: list[dict]) -> list[np.ndarray]:
    """Each case's (T, V) logits for prompt + continuation[:-1]: one prefill per case, then
    one-token steps, every case's step at a position in one `Model.eval_many` (the server's
    batched decode, whose rows are what a solo one-token `Model.eval` gives: README,
    Determinism; tests/engine/test_model.py, tests/server/test_batching.py)."""
    steps = [c["continuation"][:-1] for c in cases]
    caches = [model.new_cache(len(c["prompt"]) + len(s)) for c, s in zip(cases, steps, strict=True)]
    rows = [[model.eval(c["prompt"], cache)] for c, cache in zip(cases, caches, strict=True)]
    for i in range(max(map(len, steps))):
        live = [j for j, s in enumerate(steps) if i < len(s)]
        out = model.eval_many([([steps[j][i]], caches[j]) for j in live])
        for j, logits in zip(live, out, strict=True):
            rows[j].append(logits)
    return [np.concatenate(r) for r in rows]


def decode_agreement(model: Model, name: str) -> Agreement:
    cases = _cases(f"{name}_tokenwise")
    return summarize(
        [compare(rows, c) for rows, c in zip(decode_rows(model, cases), cases, strict=True)]
    )


# (top-1 min, mean KL max, greedy identical min of 30) = measured - margin (module docstring).
# Measured: SmolLM2 97.33% of 1349 positions (36 differ), KL 2.54e-3, greedy 14/30;
#           Gemma 3 97.56% of 1352 positions (33 differ), KL 3.46e-3, greedy 16/30.
DECODE_BOUNDS = {"smollm2": (0.9683, 3.8e-3, 12), "gemma3": (0.9706, 5.2e-3, 14)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_decode_agrees_with_llama_cpp_one_token_decode(
    name: str, smollm2_path: Path, gemma3_path: Path
) -> None:
    model = engine.load({"smollm2": smollm2_path, "gemma3": gemma3_path}[name])
    a = decode_agreement(model, name)
    top1_min, kl_max, greedy_min = DECODE_BOUNDS[name]
    print(f"{name} decode: top-1 {a.top1:.4f}, mean KL {a.kl:.2e}, greedy {a.greedy}/{a.cases}")
    assert a.top1 >= top1_min and a.kl <= kl_max and a.greedy >= greedy_min


# Issue 15's acceptance: top-1 >= 99% and KL <= 1e-2 over the 30 prompts of
# tests/golden/forward_qwen2.5-coder.json, scored over one prefill of prompt + continuation[:-1].
# Measured 99.15% (2055 positions), mean KL 1.09e-3, greedy identical 24/30. The top-1 bound is
# the acceptance's 99% (a margin of 0.15 points, 3 positions); KL and greedy take the margin.
QWEN_TOP1_MIN, QWEN_KL_MAX, QWEN_GREEDY_MIN = 0.99, 1.6e-3, 22


@pytest.mark.slow
def test_qwen_agrees_with_llama_cpp(qwen_path: Path) -> None:
    model = engine.load(qwen_path)
    cases = _cases("qwen2.5-coder")
    a = summarize([compare(model.logits(c["prompt"] + c["continuation"][:-1]), c) for c in cases])
    print(f"qwen2.5-coder: top-1 {a.top1:.4f}, mean KL {a.kl:.2e}, greedy {a.greedy}/{a.cases}")
    assert a.cases == 30
    assert a.top1 >= QWEN_TOP1_MIN and a.kl <= QWEN_KL_MAX and a.greedy >= QWEN_GREEDY_MIN


@needs_oracle
@pytest.mark.oracle
@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_tokenwise_golden_is_what_llama_cpp_computes_now(name: str) -> None:
    """Every case of the tokenwise golden, re-run through llama.cpp one token at a time."""
    import llama_cpp

    golden = json.loads((GOLDEN / f"forward_{name}_tokenwise.json").read_text())
    reason = isa_mismatch(golden["header"]["oracle"]["isa"])
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(GOLDEN))
    import make_forward_golden as mk

    # One thread: llama.cpp's one-row kernels do not depend on the thread split (this reproduces
    # the 2-thread golden exactly), and 2 spinning threads on a loaded 2-core machine crawl.
    llm = llama_cpp.Llama(
        str(mk.model_path(name)), n_ctx=512, n_threads=1, n_threads_batch=1,
        logits_all=True, verbose=False,
    )  # fmt: skip
    for i, case in enumerate(golden["cases"]):
        fresh = mk.run_case(llm, case["text"], len(case["continuation"]), tokenwise=True)
        assert fresh == case, f"case {i} differs"
