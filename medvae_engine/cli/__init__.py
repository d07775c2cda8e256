"""The `medvae` command line: one module per command family over the engine's layers; nothing imports it."""

from .main import main

__all__ = ["main"]
