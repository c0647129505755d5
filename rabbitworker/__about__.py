"""The package version, read by the build (hatch) and `rabbitworker --version`."""

__version__ = "0.1.0"
