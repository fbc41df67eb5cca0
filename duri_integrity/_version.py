"""The package version: one source of truth, imported by the package and the build backend."""

__version__ = "0.1.0"
