"""`medvae sr --format dicom` on a real MR file: an SR series on the HR grid in the source's study."""

from __future__ import annotations

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medvae_engine.cli.sr import main
from medvae_engine.imaging.grid import block_affine
from medvae_engine.imaging.io import read_volume

LPS = np.array([-1.0, -1.0, 1.0])


def test_sr_writes_a_derived_dicom_series_on_the_hr_grid(trained_run, tmp_path):
    source = get_testdata_file("MR_small.dcm")
    nifti, out = tmp_path / "sr.nii.gz", tmp_path / "sr_dicom"
    common = [source, "--sr-model", str(trained_run / "sr_model.safetensors"), "--steps", "1"]
    assert main(["sr", *common, "-o", str(nifti)]) == 0
    assert main(["sr", *common, "-o", str(out), "--format", "dicom", "--keep-phi"]) == 0
    (path,) = out.iterdir()
    ds, original = pydicom.dcmread(path), pydicom.dcmread(source)
    assert ds.StudyInstanceUID == original.StudyInstanceUID
    assert ds.SeriesInstanceUID != original.SeriesInstanceUID and ds.Modality == "MR"
    assert ds.SeriesDescription == "MedVAE SR x4 sr_model"
    expected = block_affine(read_volume(source).affine, [1 / 4, 1 / 4])
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetOrigin(), expected[:3, 3] * LPS, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing()[:2], np.linalg.norm(expected[:3, :2], axis=0),
                               rtol=1e-5)
    reference = read_volume(nifti).array  # the same seeded SR as float32
    slope = float(ds.RescaleSlope)
    values = ds.pixel_array * slope + float(ds.RescaleIntercept)
    np.testing.assert_allclose(values, reference.T, atol=slope / 2 + 1e-3)
