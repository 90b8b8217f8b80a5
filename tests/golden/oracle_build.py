"""Which llama.cpp build (and so which CPU code path) produced a golden file or runs live now.

llama.cpp's float arithmetic depends on its ISA: its AVX512 and AVX2 dot products sum in different
orders, so its logits differ in the last bits between builds. Every golden file made from llama.cpp
records `oracle_build()` in its header; tests that expect llama.cpp's bits compare only against a
build of the same ISA (`isa_mismatch`) and say why they skip otherwise.
"""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def oracle_build() -> dict[str, object]:
    """llama-cpp-python's version, ggml's CPU features as it reports them, the ISA and the CPU."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    features = sorted(
        part.split("=")[0].strip()
        for part in info.replace("|", "\n").splitlines()
        if part.strip().endswith("= 1")
    )
    if "AVX512" in features:
        isa = "avx512"
    elif "AVX2" in features:
        isa = "avx2"
    else:
        isa = "other"
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "isa": isa,
        "ggml_cpu_features": features,
        "cpu": cpu_model(),
    }


def isa_mismatch(expected_isa: str) -> str | None:
    """None when the importable llama.cpp runs the `expected_isa` code path, else a skip reason."""
    live = oracle_build()
    if live["isa"] == expected_isa:
        return None
    return (
        f"llama.cpp here is an {live['isa']} build ({live['cpu']}); the expected bits are those "
        f"of an {expected_isa} build"
    )
