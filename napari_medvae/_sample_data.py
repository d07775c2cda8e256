"""npe2 sample data: real images bundled with the package (licenses in sample_data/LICENSES.md)."""

from __future__ import annotations

from pathlib import Path

from ._display import install_on_current_viewer
from ._reader import read_layer_data

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "medvae_engine" / "sample_data"
SAMPLES = {
    "mri_brain": "mri_brain_mni152.nii.gz",
    "xray_chest": "xray_chest_rg1.nii.gz",
    "ct_slice": "ct_small.nii.gz",
    "mr_shoulder": "mr_shoulder_mr2.nii.gz",
    "mr_small": "mr_small.nii.gz",
}


def sample_path(key: str) -> Path:
    """The bundled file of sample ``key``."""
    return SAMPLE_DIR / SAMPLES[key]


def _loader(key: str):
    def load() -> list[tuple]:
        install_on_current_viewer()
        return [read_layer_data(sample_path(key))]

    load.__doc__ = f"The bundled {key.replace('_', ' ')} sample as an image layer."
    return load


mri_brain = _loader("mri_brain")
xray_chest = _loader("xray_chest")
ct_slice = _loader("ct_slice")
mr_shoulder = _loader("mr_shoulder")
mr_small = _loader("mr_small")
