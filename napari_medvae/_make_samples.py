"""Build the bundled sample images (``python -m napari_medvae._make_samples``), run once by a developer.

Each sample is a real image from an offline package source, reduced in size and written as NIfTI
through the engine's writer so its geometry (spacing, origin, direction cosines) stays correct.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medvae_engine.imaging.grid import block_affine
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "medvae_engine" / "sample_data"


def block_mean(volume: Volume, factor: int) -> Volume:
    """Average ``factor``-sized blocks; the affine moves voxel centres to the block centres."""
    a = volume.array
    shape = tuple(s // factor for s in a.shape)
    a = a[tuple(slice(0, s * factor) for s in shape)]
    blocks = a.reshape([x for s in shape for x in (s, factor)])
    out = blocks.mean(axis=tuple(range(1, 2 * len(shape), 2)))
    affine = block_affine(volume.affine, [factor] * volume.ndim)
    return Volume(out.astype(np.float32), affine, volume.modality, volume.metadata)


def crop(volume: Volume, start: tuple[int, ...], size: tuple[int, ...]) -> Volume:
    """A box of the volume; the affine origin moves to the box's first voxel."""
    index = tuple(slice(s, s + n) for s, n in zip(start, size))
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, : volume.ndim] @ np.asarray(start) + volume.affine[:3, 3]
    return Volume(volume.array[index], affine, volume.modality, volume.metadata)


def mni_crop() -> Volume:
    """A 1 mm MNI152 T1 crop around the brain centre (112 x 136 x 112)."""
    from nilearn.datasets import load_mni152_template  # optional data package

    image = load_mni152_template(resolution=1)
    data = np.asarray(image.get_fdata(), np.float32)
    data = np.round(data / data.max() * 255.0)
    volume = Volume(data, image.affine, "mri", {"source": "nilearn MNI152 template (ICBM 2009a)"})
    return crop(volume, (42, 48, 38), (112, 136, 112))


def dicom_sample(name: str, factor: int) -> Volume:
    """A pydicom / pydicom-data test file, block-averaged by ``factor``."""
    from pydicom.data import get_testdata_file  # optional test-data package

    volume = read_volume(get_testdata_file(name))
    volume.metadata = {"source": f"pydicom test data {name}", "Modality": volume.metadata.get("Modality")}
    return block_mean(volume, factor) if factor > 1 else volume


def build() -> list[Path]:
    """Write every sample as NIfTI into the sample folder; returns the paths written."""
    samples = {
        "mri_brain_mni152.nii.gz": (mni_crop(), "uint8"),
        "xray_chest_rg1.nii.gz": (dicom_sample("RG1_UNCR.dcm", 4), "int16"),
        "ct_small.nii.gz": (dicom_sample("CT_small.dcm", 1), "int16"),
        "mr_small.nii.gz": (dicom_sample("MR_small.dcm", 1), "int16"),
        "mr_shoulder_mr2.nii.gz": (dicom_sample("MR2_UNCR.dcm", 4), "int16"),
    }
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    return [write_volume(v, SAMPLE_DIR / name, dtype=dtype) for name, (v, dtype) in samples.items()]


if __name__ == "__main__":
    for path in build():
        print(path, path.stat().st_size)
