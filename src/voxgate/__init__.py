"""voxgate: a self-hosted gateway for realtime voice and multimodal AI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voxgate")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
