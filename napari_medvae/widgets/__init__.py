"""Docked widgets of the plugin: model, encode/reconstruct, maps, compare, super-resolve, view."""

from .compare import CompareWidget
from .encode import EncodeWidget
from .maps import MapsWidget
from .model_panel import ModelWidget
from .super_resolve import SuperResolveWidget
from .view import ViewWidget

__all__ = ["CompareWidget", "EncodeWidget", "MapsWidget", "ModelWidget", "SuperResolveWidget",
           "ViewWidget"]
