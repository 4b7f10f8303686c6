"""simobs: compare galaxy-formation simulations with observations using generative models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("simobs")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
