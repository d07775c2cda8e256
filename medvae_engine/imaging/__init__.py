"""Medical images as `Volume`s: reading and writing every format, modality, de-identification."""

from medvae_engine.imaging.atomic import atomic_write, atomic_write_text
from medvae_engine.imaging.dicom import SeriesInfo, list_series
from medvae_engine.imaging.dicom_write import write_dicom_series
from medvae_engine.imaging.io import detect_format, read_volume, write_volume
from medvae_engine.imaging.volume import MODALITIES, Volume

__all__ = [
    "MODALITIES",
    "SeriesInfo",
    "Volume",
    "atomic_write",
    "atomic_write_text",
    "detect_format",
    "list_series",
    "read_volume",
    "write_dicom_series",
    "write_volume",
]
