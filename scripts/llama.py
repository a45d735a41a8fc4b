#!/usr/bin/env python3
"""A real LLM engine for tests and benchmarks: llama.cpp's `llama-server`, built from the
source that the llama-cpp-python distribution on PyPI carries, and a tiny llama model the
project writes itself (random weights: routing is what is tested, not the answers).

    python scripts/llama.py build     # build (or find) llama-server, print its path
    python scripts/llama.py model     # write (or find) the tiny model, print its path

Both are cached outside the repository like the control plane's binaries
($CLUSTERPOOL_CACHE, default ~/.cache/clusterpool, under llama/), keyed by version and
shape; $LLAMA_SERVER_BIN, when set, names an existing binary and wins. A cold build takes
about 4 minutes on 2 cores (cmake, Release, portable: GGML_NATIVE=OFF, only the
llama-server target).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import cache_root

LLAMA_CPP_PYTHON = "0.3.36"
JOBS = "2"
# The tiny model: wide and deep enough that prefilling a prompt takes visibly longer than
# reusing its cached prefix (see docs/load-balancing.md for the figures measured here).
MODEL = {"embedding": 512, "blocks": 4, "heads": 8, "feed_forward": 1024, "context": 4096}


def log(msg: str) -> None:
    print(f"[llama] {msg}", file=sys.stderr, flush=True)


def llama_dir() -> Path:
    return cache_root() / "llama"


def source_dir() -> Path:
    return llama_dir() / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"


def server_path() -> Path:
    env = os.environ.get("LLAMA_SERVER_BIN")
    if env:
        return Path(env)
    return llama_dir() / f"llama-server-{LLAMA_CPP_PYTHON}" / "llama-server"


def model_path() -> Path:
    shape = "-".join(f"{k[0]}{v}" for k, v in MODEL.items())
    return llama_dir() / f"tiny-llama-{shape}.gguf"


def fetch_source() -> Path:
    """The sdist of llama-cpp-python (pip download), unpacked once."""
    if source_dir().is_dir():
        return source_dir()
    llama_dir().mkdir(parents=True, exist_ok=True)
    archive = llama_dir() / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.exists():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution (about 77 MB)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--dest", str(llama_dir()), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
            check=True,
        )  # fmt: skip
        found = sorted(llama_dir().glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
        if not found:
            raise SystemExit(f"pip download left no llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz in {llama_dir()}")
    log("unpacking")
    with tarfile.open(archive) as tar:
        tar.extractall(llama_dir(), filter="data")
    if not source_dir().is_dir():
        raise SystemExit(f"the archive holds no {source_dir()}")
    return source_dir()


def run_with_progress(cmd: list[str], cwd: Path, what: str, logfile: Path) -> None:
    """Run a long command, printing its last progress line every 20 seconds."""
    start = time.monotonic()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(20):
                lines = logfile.read_text(errors="replace").splitlines()
                last = next((line for line in reversed(lines) if line.startswith("[")), "")
                log(f"  {what}: {time.monotonic() - start:.0f}s {last[:60]}")

        threading.Thread(target=heartbeat, daemon=True).start()
        code = proc.wait()
        done.set()
    if code != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{what} failed (exit {code}); the end of {logfile}:\n{tail}")
    log(f"  {what}: done in {time.monotonic() - start:.0f}s")


def build() -> Path:
    """llama-server, cached; built from the source when missing."""
    dest = server_path()
    if dest.exists():
        log(f"llama-server cached at {dest}")
        return dest
    if os.environ.get("LLAMA_SERVER_BIN"):
        raise SystemExit(f"LLAMA_SERVER_BIN={dest} does not exist")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"no `{tool}` on PATH: install cmake and a C++ compiler (g++), or set LLAMA_SERVER_BIN")
    src = fetch_source()
    work = llama_dir() / f"build-{LLAMA_CPP_PYTHON}"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    log(f"building llama-server from {src} (about 4 minutes on 2 cores)")
    run_with_progress(
        ["cmake", "-S", str(src), "-B", str(work), *generator, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
         "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
         "-DBUILD_SHARED_LIBS=OFF"],
        llama_dir(), "cmake configure", llama_dir() / "configure.log",
    )  # fmt: skip
    run_with_progress(
        ["cmake", "--build", str(work), "--target", "llama-server", "-j", JOBS],
        llama_dir(),
        "cmake build",
        llama_dir() / "build.log",
    )
    built = next(work.rglob("llama-server"), None)
    if built is None or not built.is_file():
        raise SystemExit(f"the build made no llama-server under {work}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, dest.with_suffix(".tmp"))
    dest.with_suffix(".tmp").rename(dest)
    shutil.rmtree(work, ignore_errors=True)
    log(f"llama-server at {dest}")
    return dest


def model() -> Path:
    """The tiny llama model, cached: the tokenizer of llama.cpp's vocabulary-only SPM file,
    the shape in MODEL, random float32 weights (a fixed seed: the same file every time)."""
    dest = model_path()
    if dest.exists():
        log(f"model cached at {dest}")
        return dest
    import gguf  # the project's dev dependencies
    import numpy as np

    vocab = gguf.GGUFReader(fetch_source() / "models" / "ggml-vocab-llama-spm.gguf")

    def array(name: str) -> list[Any]:
        f = vocab.fields[name]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p) for p in array("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in array("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in array("tokenizer.ggml.token_type")]

    def scalar(name: str) -> int:
        f = vocab.fields[name]
        return int(f.parts[f.data[0]][0])

    m = MODEL
    n_vocab, d, ff, heads = len(tokens), m["embedding"], m["feed_forward"], m["heads"]
    tmp = dest.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name("clusterpool-tiny-llama")
    w.add_context_length(m["context"])
    w.add_embedding_length(d)
    w.add_block_count(m["blocks"])
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(d // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(scalar("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(scalar("tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(scalar("tokenizer.ggml.unknown_token_id"))
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    tensor("token_embd.weight", n_vocab, d)
    ones("output_norm.weight", d)
    tensor("output.weight", n_vocab, d)
    for b in range(m["blocks"]):
        ones(f"blk.{b}.attn_norm.weight", d)
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{b}.attn_{part}.weight", d, d)
        ones(f"blk.{b}.ffn_norm.weight", d)
        tensor(f"blk.{b}.ffn_gate.weight", ff, d)
        tensor(f"blk.{b}.ffn_up.weight", ff, d)
        tensor(f"blk.{b}.ffn_down.weight", d, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(dest)
    log(f"model at {dest} ({dest.stat().st_size // (1 << 20)} MB)")
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("what", choices=("build", "model", "source"))
    args = p.parse_args()
    print({"build": build, "model": model, "source": fetch_source}[args.what]())


if __name__ == "__main__":
    main()
