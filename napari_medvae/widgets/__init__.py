"""Docked widgets of the plugin: model, encode/reconstruct, maps and compare."""

from .compare import CompareWidget
from .encode import EncodeWidget
from .maps import MapsWidget
from .model_panel import ModelWidget

__all__ = ["CompareWidget", "EncodeWidget", "MapsWidget", "ModelWidget"]
