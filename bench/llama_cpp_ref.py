"""llama.cpp for the CPU benchmark's reference row, obtained and measured by the bench itself.

    .venv/bin/python bench/llama_cpp_ref.py          # build (once) and print where it is

`bench/cpu_generate.py --gguf` calls `measure`.

The pinned llama-cpp-python sdist (PyPI publishes no CPU wheel) is downloaded with pip, and its
vendored llama.cpp is built with CMake + Ninja: only the `llama` shared library (for the Python
bindings, whose pure-Python package comes from the same sdist) and `llama-bench`. Everything
lives in ~/.cache/teller-bench (`TELLER_BENCH_CACHE`), in a folder named after the version and
the build flags, so a cached build is reused and a change of flags builds anew.

Flags: the x86 instruction sets this CPU reports (from /proc/cpuinfo), never GGML_NATIVE and
never AMX. On this project's 2-core Xeon VMs (AMX-INT8 reported and usable: torch's oneDNN runs
its bf16 matmuls on AMX there) llama.cpp's AMX path segfaults in llama_decode as soon as more
than one token is evaluated (its Q4_1 weights repacked for AMX; a machine-dependent crash
reported upstream as ggml-org/llama.cpp#20824); `-march=native` would switch it on. Without AMX
llama.cpp runs its AVX512-VNNI kernels, as on any CPU without AMX.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess  # noqa: S404 - runs pip, cmake and ninja with fixed argument lists
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

LLAMA_CPP_PYTHON = "0.3.36"
"""Pinned llama-cpp-python: its vendored llama.cpp is what the row measures."""
DISKCACHE = "diskcache==5.6.3"
"""The bindings import it at load time; pure Python."""
CACHE = Path(os.environ.get("TELLER_BENCH_CACHE", Path.home() / ".cache" / "teller-bench"))
TARGETS = ("llama", "llama-bench")

# ggml's CMake option -> the /proc/cpuinfo flags it needs (GGML_AVX512 compiles with F, CD, VL,
# DQ and BW)
ISA_OPTIONS = {
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
    "GGML_AVX_VNNI": ("avx_vnni",),
}
FIXED_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)


class BuildError(RuntimeError):
    """llama.cpp could not be obtained; the message says which step failed and why."""


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: the folder with libllama.so and llama-bench, and the bindings."""

    root: Path
    cmake_options: tuple[str, ...]
    how: str
    build_seconds: float
    """How long the build took (download to bindings), now or when it was cached."""

    @property
    def lib_dir(self) -> Path:
        return self.root / "build" / "bin"

    @property
    def llama_bench(self) -> Path:
        return self.lib_dir / "llama-bench"

    @property
    def python_path(self) -> Path:
        """Holds the `llama_cpp` package (from the sdist) and diskcache."""
        return self.root / "python"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that imports the bindings against this build."""
        path = os.pathsep.join(
            p for p in (str(self.python_path), os.environ.get("PYTHONPATH")) if p
        )
        return {**os.environ, "PYTHONPATH": path, "LLAMA_CPP_LIB_PATH": str(self.lib_dir)}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_options(flags: set[str] | None = None) -> tuple[str, ...]:
    """The pinned options plus one ON/OFF per instruction set, as this CPU reports them."""
    flags = cpu_flags() if flags is None else flags
    isa = tuple(
        f"-D{option}={'ON' if flags.issuperset(needs) else 'OFF'}"
        for option, needs in ISA_OPTIONS.items()
    )
    return FIXED_OPTIONS + isa


def build_root(options: tuple[str, ...]) -> Path:
    digest = hashlib.sha256("\n".join(options).encode()).hexdigest()[:10]
    return CACHE / f"llama.cpp-{LLAMA_CPP_PYTHON}-{digest}"


def _run(step: str, cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    """Runs one build step at low priority, appending to the log; raises with its last lines."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        niced = ["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd
        result = subprocess.run(niced, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)  # noqa: S603
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-12:])
        raise BuildError(f"llama.cpp {step} failed (exit {result.returncode}; log {log}):\n{tail}")


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        package = {"ninja": "ninja-build", "c++": "g++"}.get(tool, tool)
        raise BuildError(f"building llama.cpp needs `{tool}` on PATH (apt-get install {package})")
    return found


def obtain(quiet: bool = False) -> LlamaCpp:
    """The cached build, or a build now (about 20 minutes on 2 busy cores).

    Raises:
        BuildError: a tool is missing, or pip download, cmake or ninja failed.
    """
    options = cmake_options()
    root = build_root(options)
    done = root / "BUILT"
    if done.is_file() and (root / "build" / "bin" / "libllama.so").is_file():
        seconds = float(done.read_text().split()[0])
        return LlamaCpp(root, options, f"cached build in {root}", seconds)
    cmake, ninja = _require("cmake"), _require("ninja")
    _require("c++")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    if not quiet:
        print(
            f"building llama.cpp (llama-cpp-python {LLAMA_CPP_PYTHON}) into {root}; log {log}",
            flush=True,
        )  # noqa: T201
    started = time.perf_counter()
    sdist = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run("download", [*pip, "-d", str(root), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], log)
    source = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        with tarfile.open(sdist) as tar:
            tar.extractall(root, filter="data")
    build = root / "build"
    where = ["-S", str(source / "vendor" / "llama.cpp"), "-B", str(build)]
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    _run("configure", [cmake, *where, *generator, *options], log)
    jobs = str(len(os.sched_getaffinity(0)))
    _run("build", [cmake, "--build", str(build), "-j", jobs, "--target", *TARGETS], log)
    built = LlamaCpp(root, options, f"built now into {root}")
    package = built.python_path / "llama_cpp"
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(source / "llama_cpp", package)
    if not (built.python_path / "diskcache").is_dir():
        pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check"]
        _run("install of diskcache", [*pip, "--target", str(built.python_path), DISKCACHE], log)
    seconds = time.perf_counter() - started
    done.write_text(f"{seconds:.0f} s\n")
    return LlamaCpp(root, options, built.how, seconds)


# --- measuring: runs in a child process, so a native crash is reported, not fatal ---------------

Run = dict[str, Any]
"""One timed generation: ttft_ms, decode_tok_s (wall clock per streamed token) and the same
from process CPU time (ttft_cpu_ms, decode_cpu_tok_s), completion_tokens."""


def _child_loop(spec: dict[str, Any]) -> None:
    """In the child: load the GGUF with llama-cpp-python, say so, then answer one request per
    stdin line ("decode": the chat prompt to `new_tokens`; "ttft": the long prompt to its
    first token; "info") with one JSON line, until stdin closes."""
    import llama_cpp  # noqa: PLC0415 - only importable in the child (PYTHONPATH, LLAMA_CPP_LIB_PATH)

    threads = spec["threads"]
    llm = llama_cpp.Llama(spec["gguf"], n_threads=threads, n_threads_batch=threads,
                          n_ctx=spec["n_ctx"], n_batch=spec["n_batch"], verbose=False)  # fmt: skip
    last: list[int] = []

    def run(ids: list[int], tokens: int) -> Run:
        llm.reset()  # no prefix reuse between runs: every prompt is evaluated anew
        out: list[int] = []
        start, start_cpu = time.perf_counter(), time.process_time()
        first, first_cpu = None, start_cpu
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if first is None:
                first, first_cpu = time.perf_counter(), time.process_time()
            out.append(token)
            if len(out) >= tokens or token == llm.token_eos():
                break
        end, end_cpu = time.perf_counter(), time.process_time()
        first = first or end
        many = len(out) > 1
        last[:] = out
        return {"ttft_ms": (first - start) * 1000, "ttft_cpu_ms": (first_cpu - start_cpu) * 1000,
                "decode_tok_s": (len(out) - 1) / (end - first) if many else 0.0,
                "decode_cpu_tok_s": (len(out) - 1) / (end_cpu - first_cpu) if many else 0.0,
                "completion_tokens": len(out)}  # fmt: skip

    run(spec["prompt_ids"][:8], 4)  # warm-up
    print(json.dumps({"ready": True}), flush=True)  # noqa: T201
    for line in sys.stdin:
        request = line.strip()
        if request == "decode":
            answer: dict[str, Any] = run(spec["prompt_ids"], spec["new_tokens"])
            answer["first32_text"] = llm.detokenize(last[:32]).decode(errors="replace")
        elif request == "ttft":
            answer = run(spec["long_ids"], 1)
        else:
            info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
            answer = {"llama_cpp_python": llama_cpp.__version__, "system_info": info}
        print(json.dumps(answer), flush=True)  # noqa: T201


class ChildFailed(RuntimeError):
    """The llama.cpp child crashed, exited or took too long; the message says which and how."""


class LlamaCppChild:
    """llama.cpp (through its Python bindings) in a child process, asked for one run at a time,
    so its runs can alternate with Teller's on a box that other jobs slow down unevenly."""

    def __init__(self, build: LlamaCpp, spec: dict[str, Any], timeout: float = 900) -> None:
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        cmd = [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "child"]
        self._process = subprocess.Popen(  # noqa: S603
            cmd, env=build.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1,
        )  # fmt: skip
        self._stdin = cast("IO[str]", self._process.stdin)
        self._stdout = cast("IO[str]", self._process.stdout)
        self._stdin.write(json.dumps(spec) + "\n")
        self._stdin.flush()
        self._read("loading the model and a warm-up run")

    def ask(self, request: str) -> dict[str, Any]:
        """One run ("decode" or "ttft") or "info"."""
        try:
            self._stdin.write(request + "\n")
            self._stdin.flush()
        except BrokenPipeError:
            pass  # it died: _read says how
        return self._read(request)

    def _read(self, what: str) -> dict[str, Any]:
        ready, _, _ = select.select([self._stdout], [], [], self.timeout)
        line = self._stdout.readline() if ready else None
        if line:
            return json.loads(line)
        if line is None:
            self._process.kill()
            self._process.wait()
            raise ChildFailed(f"llama.cpp took over {self.timeout:.0f} s ({what})")
        code = self._process.wait()
        raise ChildFailed(_crash_message(f"llama.cpp ({what})", code, self._stderr_text()))

    def cpu_seconds(self) -> float:
        """CPU time the child has used so far (all its threads), from /proc."""
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._stderr.close()


def _crash_message(what: str, code: int, stderr: str) -> str:
    if code < 0:
        try:
            how = f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    lines = [line for line in stderr.strip().splitlines() if "Extension modules" not in line]
    tail = "\n".join(lines[-12:])
    return f"{what} {how}:\n{tail}" if tail else f"{what} {how}"


def _summary(decodes: list[Run], ttfts: list[Run]) -> dict[str, Any]:
    """Best-of figures of one engine's runs (other jobs only ever slow a run down)."""
    best = max(decodes, key=lambda r: r["decode_tok_s"])
    return {
        **{k: v for k, v in best.items() if k != "decode_cpu_tok_s"},
        "decode_tok_s_runs": [round(r["decode_tok_s"], 1) for r in decodes],
        "decode_cpu_tok_s": max(r["decode_cpu_tok_s"] for r in decodes),
        "ttft_100_prompt_ms": min(t["ttft_ms"] for t in ttfts),
        "ttft_100_prompt_cpu_ms": min(t["ttft_cpu_ms"] for t in ttfts),
    }


def measure_llama_bench(
    build: LlamaCpp,
    gguf: Path,
    threads: int,
    prompt: int,
    new_tokens: int,
    depth: int,
    repeats: int,
    timeout: float = 900,
) -> dict[str, Any]:
    """llama.cpp's own `llama-bench`: prompt processing of `prompt` tokens and generation of
    `new_tokens` after `depth` tokens of context, mean of `repeats` (random token ids)."""
    cmd = [str(build.llama_bench), "-m", str(gguf), "-t", str(threads), "-r", str(repeats),
           "-o", "json"]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for args in (
        ["-p", str(prompt), "-n", "0"],
        ["-p", "0", "-n", str(new_tokens), "-d", str(depth)],
    ):
        try:
            result = subprocess.run(  # noqa: S603
                [*cmd, *args], env=build.env(), capture_output=True, text=True, timeout=timeout,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"failed": f"llama-bench took over {timeout:.0f} s"}
        if result.returncode != 0:
            return {"failed": _crash_message("llama-bench", result.returncode, result.stderr)}
        rows.extend(json.loads(result.stdout))
    prefill = next(r for r in rows if r["n_prompt"] == prompt)
    decode = next(r for r in rows if r["n_gen"] == new_tokens)
    return {
        "command": " ".join(cmd[1:]),
        "prompt_tok_s": prefill["avg_ts"],
        "ttft_100_prompt_ms_equivalent": prompt / prefill["avg_ts"] * 1000,
        "decode_tok_s": decode["avg_ts"],
        "decode_tok_s_stddev": decode["stddev_ts"],
        "decode_depth": depth,
        "build_commit": decode.get("build_commit"),
        "cpu_info": decode.get("cpu_info"),
    }


def measure(
    gguf: Path,
    prompt_ids: list[int],
    long_ids: list[int],
    *,
    threads: int,
    new_tokens: int,
    repeats: int,
    teller: Callable[[str], Run] | None = None,
) -> dict[str, Any]:
    """The llama.cpp row: obtained (cached or built), then measured in a child process.

    With `teller` (a function doing Teller's own "decode" or "ttft" run of the same prompts),
    the runs alternate, Teller's then llama.cpp's, `repeats` rounds, and `paired` gives both
    engines' best-of figures from those same rounds and each round's decode ratio: on a box
    that other jobs slow down unevenly, a pair measured back to back is the fairest comparison.
    """
    if not gguf.is_file():
        return {"skipped": f"no GGUF file at {gguf}"}
    try:
        build = obtain()
    except BuildError as exc:
        return {"skipped": str(exc)}
    spec = {"gguf": str(gguf), "threads": threads, "n_ctx": 1024, "n_batch": 512,
            "prompt_ids": prompt_ids, "long_ids": long_ids, "new_tokens": new_tokens}  # fmt: skip
    mine: dict[str, list[Run]] = {"decode": [], "ttft": []}
    theirs: dict[str, list[Run]] = {"decode": [], "ttft": []}
    # Neither side may spin while the other runs (OpenMP workers busy-wait for a while after
    # a parallel region): each side's CPU time during the other's runs says whether it did.
    idle = {"llama_cpp_cpu_s_while_teller_ran": 0.0, "teller_cpu_s_while_llama_cpp_ran": 0.0,
            "teller_wall_s": 0.0, "llama_cpp_wall_s": 0.0}  # fmt: skip
    try:
        child = LlamaCppChild(build, spec)
        try:
            for _ in range(repeats):
                for kind in ("decode", "ttft"):
                    if teller is not None:
                        cpu, wall = child.cpu_seconds(), time.perf_counter()
                        mine[kind].append(teller(kind))
                        idle["llama_cpp_cpu_s_while_teller_ran"] += child.cpu_seconds() - cpu
                        idle["teller_wall_s"] += time.perf_counter() - wall
                    cpu, wall = time.process_time(), time.perf_counter()
                    theirs[kind].append(child.ask(kind))
                    idle["teller_cpu_s_while_llama_cpp_ran"] += time.process_time() - cpu
                    idle["llama_cpp_wall_s"] += time.perf_counter() - wall
            info = child.ask("info")
        finally:
            child.close()
    except ChildFailed as exc:
        row: dict[str, Any] = {"failed": str(exc)}
    else:
        row = {**_summary(theirs["decode"], theirs["ttft"]), **info}
        row["ttft_100_prompt_tokens"] = len(long_ids)
        if teller is not None:
            ratios = [
                m["decode_tok_s"] / t["decode_tok_s"]
                for m, t in zip(mine["decode"], theirs["decode"], strict=True)
            ]
            row["paired"] = {
                "teller": _summary(mine["decode"], mine["ttft"]),
                "decode_ratio_per_round": [round(r, 3) for r in ratios],
                "other_side_idle": {k: round(v, 3) for k, v in idle.items()},
            }
    row["llama_bench"] = measure_llama_bench(
        build, gguf, threads, len(long_ids), new_tokens, len(prompt_ids), repeats
    )
    row.update({
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "obtained": build.how,
        "build_seconds": build.build_seconds,
        "settings": {"n_threads": threads, "n_ctx": 1024, "n_batch": 512,
                     "cmake_options": list(build.cmake_options),
                     "sampling": "greedy (top_k=1)",
                     "timing": "wall clock per streamed token (child process), as Teller's"},
    })  # fmt: skip
    return row


def main() -> None:
    if sys.argv[1:] == ["child"]:
        _child_loop(json.loads(sys.stdin.readline()))
        return
    try:
        result = obtain()
    except BuildError as exc:
        sys.exit(str(exc))
    print(f"{result.how} (build took {result.build_seconds:.0f} s); {result.llama_bench}")  # noqa: T201


if __name__ == "__main__":
    main()
