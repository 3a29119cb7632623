"""Whether llama.cpp, as it was compiled, runs on this machine.

llama-cpp-python is compiled on the machine that installs it, for that machine's CPU.
A CPU can report AMX (Sapphire Rapids and later) while the virtual machine it runs in
faults on the first tile instruction: llama.cpp then dies of SIGILL in the first prompt
long enough for its AMX matrix code, and the whole server with it, every session lost.
So when the library holds AMX code, a child process loads the model and evaluates such
a prompt first; if the child dies of a signal, ``voxgate/local`` is unavailable (with
how to rebuild it) and the server goes on without it. Builds without AMX code pay
nothing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from voxgate.engines.base import EngineUnavailable

#: Exported by llama.cpp's CPU library only when it was compiled with AMX.
AMX_SYMBOL = "_Z28ggml_backend_amx_buffer_typev"
REBUILD = (
    "rebuild llama-cpp-python without AMX: `make llama-wheel` and `make run` do it; by hand, "
    "CFLAGS and CXXFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16', then "
    "pip install --no-cache-dir --force-reinstall llama-cpp-python==0.3.36"
)
#: The child: load the model and evaluate a prompt of 96 tokens in one batch (long
#: enough for llama.cpp's AMX matrix code). Its argument is the model's path.
CHILD = """
import sys
from llama_cpp import Llama
llama = Llama(model_path=sys.argv[1], n_ctx=256, n_batch=128, n_threads=1, verbose=False)
llama.eval(llama.tokenize(b" probe" * 96)[:96])
"""


def cpu_library() -> Path | None:
    """llama.cpp's CPU library inside the installed llama_cpp package (None: not found)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return next(iter(sorted(lib.glob("libggml-cpu.so*"))), None)


def has_amx(library: Path | None) -> bool:
    """Whether ``library`` was compiled with llama.cpp's AMX code."""
    if library is None:
        return False
    try:
        return hasattr(ctypes.CDLL(str(library)), AMX_SYMBOL)
    except OSError:
        return False


def check_runs(
    model: Path,
    *,
    library: Path | None = None,
    child: Sequence[str] | None = None,
    timeout: float = 300.0,
) -> None:
    """Raise :class:`EngineUnavailable` if llama.cpp crashes on this machine evaluating a
    prompt with ``model``. Checked in a child process (``child``: its command, the model's
    path appended; by default this Python running :data:`CHILD`) only when ``library``
    (by default the installed one, see :func:`cpu_library`) holds AMX code, or when
    ``child`` is given. Blocks for the child's load and prompt (seconds): call from a
    thread."""
    if child is None:
        if not has_amx(library if library is not None else cpu_library()):
            return
        child = [sys.executable, "-c", CHILD]
    try:
        done = subprocess.run(
            [*child, str(model)], capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(
            f"voxgate/local: the check that llama.cpp runs failed: {exc}"
        ) from exc
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise EngineUnavailable(
            f"voxgate/local: llama.cpp dies of {name} on this machine when it evaluates a "
            f"prompt (where it was compiled with AMX: this CPU reports AMX but does not run "
            f"it): {REBUILD}"
        )
