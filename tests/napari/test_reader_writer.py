"""Reader and writer round trips keep geometry, metadata and latent sidecars (real images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY
from pydicom.data import get_testdata_file

from medvae_engine.codec.latents import load_latent
from medvae_engine.codec.pipeline import encode
from medvae_engine.data.files import VOLUME_SUFFIXES
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import AutoencoderKL, load_model
from napari_medvae import _reader
from napari_medvae._layers import (
    display_geometry,
    latent_to_layer_data,
    layer_affine,
    volume_to_layer_data,
)
from napari_medvae._reader import napari_get_reader
from napari_medvae._sample_data import SAMPLES, sample_path
from napari_medvae._writer import write_image, write_labels


def read_one(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    (layer_data,) = reader(str(path))
    return layer_data


def test_reader_sets_scale_and_translate_from_spacing_and_origin(tmp_path, mri_crop):
    path = write_volume(mri_crop, tmp_path / "crop.nii.gz")
    data, attributes, kind = read_one(path)
    assert kind == "image" and data.shape == mri_crop.shape
    np.testing.assert_allclose(attributes["scale"], mri_crop.spacing)
    np.testing.assert_allclose(attributes["translate"], mri_crop.origin)  # MNI: identity directions
    meta = attributes["metadata"]["medvae"]
    assert meta["modality"] == "mri" and meta["source_path"] == str(path)


def test_oblique_dicom_keeps_direction_cosines_through_writer(tmp_path):
    source = get_testdata_file("MR2_UNCR.dcm")  # oblique shoulder MR
    data, attributes, _ = read_one(source)
    original = read_volume(source)
    scale, translate = display_geometry(original.affine, 2)
    np.testing.assert_allclose(attributes["scale"], scale)
    np.testing.assert_allclose(attributes["translate"], translate)
    assert attributes["metadata"]["medvae"]["source_metadata"]["Modality"] == "MR"
    (written,) = write_image(str(tmp_path / "mr2.nii.gz"), data, attributes)
    back = read_volume(written)
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, original.array)


def test_dicom_series_folder_is_read_as_a_volume():
    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    data, attributes, _ = read_one(folder)
    volume = read_volume(folder)
    assert data.shape == volume.shape and data.ndim == 3
    np.testing.assert_allclose(attributes["scale"], display_geometry(volume.affine, 3)[0])
    assert attributes["metadata"]["medvae"]["modality"] == "ct"


def test_moved_layer_is_written_where_it_is_shown(tmp_path, mri_crop):
    data, attributes, _ = volume_to_layer_data(mri_crop, "crop")
    attributes["translate"] = [t + 5.0 for t in attributes["translate"]]
    (written,) = write_image(str(tmp_path / "moved.nii"), data, attributes)
    np.testing.assert_allclose(read_volume(written).origin, np.asarray(mri_crop.origin) + 5.0)


def test_labels_written_in_source_geometry(tmp_path, mri_crop):
    labels = (mri_crop.array > mri_crop.array.mean()).astype(np.uint8)
    data, attributes, kind = volume_to_layer_data(mri_crop.with_array(labels), "mask", "labels")
    assert kind == "labels"
    (written,) = write_labels(str(tmp_path / "mask.nii.gz"), data, attributes)
    back = read_volume(written)
    np.testing.assert_allclose(back.affine, mri_crop.affine)
    np.testing.assert_array_equal(back.array, labels)


def test_latent_layer_round_trips_through_latent_file(tmp_path, mri_crop, tiny_model_path):
    latent = encode(mri_crop, load_model(tiny_model_path))
    data, attributes, _ = latent_to_layer_data(latent, "z")
    meta = attributes["metadata"]["medvae"]
    np.testing.assert_allclose(layer_affine(meta, attributes["scale"], attributes["translate"]),
                               latent.affine)
    assert meta["model"] == latent.model and meta["weights_sha256"] == latent.weights_sha256
    (written,) = write_image(str(tmp_path / "z.nii.gz"), data, attributes)
    back = load_latent(written)
    np.testing.assert_array_equal(back.array, latent.array)
    np.testing.assert_allclose(back.affine, latent.affine)
    again = read_one(written)  # the reader recognises latent files
    assert again[1]["metadata"]["medvae"]["kind"] == "latent"


def test_reader_declines_unknown_and_reports_bad_files(tmp_path, errors):
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    reader = napari_get_reader(str(bad))
    assert reader(str(bad)) == [(None,)]
    assert errors and "broken.nii.gz" in errors[0]


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_bundled_samples_are_real_images_with_geometry(key):
    volume = read_volume(sample_path(key))
    assert volume.array.std() > 0 and min(volume.spacing) > 0
    assert (sample_path(key).parent / "LICENSES.md").read_text().count(SAMPLES[key]) == 1


def test_3d_latent_of_a_non_ras_volume_overlays_it_and_round_trips(tmp_path, mri_crop):
    """3D latents are stored RAS; the layer shows them in the image's voxel order, over the image."""
    affine = mri_crop.affine.copy()  # the same anatomy stored LPS: flip axes 0 and 1
    for axis in (0, 1):
        affine[:3, 3] += affine[:3, axis] * (mri_crop.shape[axis] - 1)
        affine[:3, axis] *= -1
    lps = Volume(np.flip(mri_crop.array, (0, 1)).copy(), affine, "mri")
    torch.manual_seed(0)
    model = AutoencoderKL(**{**TINY, "spatial_dims": 3}).eval()
    latent = encode(Volume(lps.array[:30, :38], lps.affine, "mri"), model)  # pads 30, 38 to 32, 40
    assert latent.orientation == "RAS" and latent.image_orientation == "LPS"
    data, attributes, _ = latent_to_layer_data(latent, "z")
    np.testing.assert_array_equal(data, np.flip(latent.array[0], (0, 1)))  # RAS -> LPS order
    image_scale, image_translate = display_geometry(lps.affine, 3)
    corner = (np.asarray(attributes["translate"]) - image_translate) / image_scale
    # latent voxel 0 (LPS order) covers image voxels [f*0 - pad, f - 1 - pad]: the padding that
    # RAS order puts at the end of axes 0 and 1 comes first in LPS order
    np.testing.assert_allclose(corner, [1.5 - 2, 1.5 - 2, 1.5], atol=1e-9)
    np.testing.assert_allclose(attributes["scale"], np.asarray(image_scale) * 4)
    (written,) = write_image(str(tmp_path / "z.nii.gz"), data, attributes)
    back = load_latent(written)
    np.testing.assert_array_equal(back.array, latent.array)
    np.testing.assert_allclose(back.affine, latent.affine)


def test_manifest_patterns_follow_the_engine_suffix_table():
    """napari.yaml's reader patterns are the volume suffixes the engine's readers handle."""
    manifest = yaml.safe_load((Path(_reader.__file__).parent / "napari.yaml").read_text())
    patterns = manifest["contributions"]["readers"][0]["filename_patterns"]
    assert sorted(p.removeprefix("*") for p in patterns) == sorted(VOLUME_SUFFIXES)
