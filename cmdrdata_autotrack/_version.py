"""The package version (read by the build backend and by ``cmdrdata-run --version``)."""

__version__ = "0.7.2"
