"""The plugin's DICOM series writer through napari and npe2: a CT series opened in napari is saved as
a derived, de-identified series in the source's geometry (read back with SimpleITK and pydicom)."""

from __future__ import annotations

import shutil
from pathlib import Path

import npe2
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medvae_engine.codec.pipeline import encode, reconstruct
from medvae_engine.imaging.io import read_volume
from medvae_engine.models import load_model
from napari_medvae._layers import latent_to_layer_data, provenance, volume_to_layer_data
from napari_medvae._writer import write_dicom

CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
WRITER = "napari-medvae.write_dicom"


def itk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_geometry(written: sitk.Image, source: sitk.Image) -> None:
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)


@pytest.mark.gui
def test_ct_series_opened_in_napari_saves_as_a_dicom_series(viewer, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(CT_SERIES, series)
    layer = viewer.open(str(series), plugin="napari-medvae")[0]
    layer.contrast_limits = (-160.0, 240.0)  # a soft-tissue window: WindowCenter 40, width 400
    out = tmp_path / "export"
    saved = viewer.layers.save(str(out), selected=True, plugin=WRITER)
    assert saved == [str(out)]
    image = itk_series(out)
    assert_same_geometry(image, itk_series(series))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), layer.data)
    source = pydicom.dcmread(next(series.iterdir()))
    for path in out.iterdir():
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "ANONYMOUS" and b"Doe^Peter" not in path.read_bytes()
        assert ds.StudyInstanceUID != source.StudyInstanceUID  # de-identified: pseudonymous
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_reconstruction_layer_through_npe2_names_the_model(tmp_path, tiny_model_path):
    manager = npe2.PluginManager.instance()
    manager.discover()
    volume = read_volume(CT_SERIES)
    model = load_model(str(tiny_model_path))
    latent = encode(volume, model)
    recon = reconstruct(volume, model)
    layer_data = volume_to_layer_data(recon, "recon", "reconstruction", **provenance(latent))
    out = tmp_path / "recon_dicom"
    assert npe2.write(str(out), [layer_data], plugin_name=WRITER) == [str(out)]
    files = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert {ds.SeriesDescription for ds in files} == {f"MedVAE reconstruction {latent.model}"}
    assert_same_geometry(itk_series(out), itk_series(CT_SERIES))
    values = sitk.GetArrayFromImage(itk_series(out)).transpose(2, 1, 0)
    np.testing.assert_allclose(values, recon.array, atol=0.5 + 1e-3)


def test_latent_layer_is_refused_with_a_notification(tmp_path, tiny_model_path, errors):
    latent = encode(read_volume(CT_SERIES), load_model(str(tiny_model_path)))
    data, attributes, _ = latent_to_layer_data(latent, "z")
    assert write_dicom(str(tmp_path / "z"), data, attributes) == []
    assert errors and "latent" in errors[0] and not (tmp_path / "z").exists()
