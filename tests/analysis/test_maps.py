"""Volume-level maps: same shape and affine as the reference, geometry checks, resampling."""

import numpy as np
import pytest
from nilearn.datasets import load_mni152_template
from scipy import ndimage

from medvae_engine.analysis import compute_maps
from medvae_engine.analysis.maps import check_geometry
from medvae_engine.analysis.metrics import local_psnr_map, ssim_map
from medvae_engine.analysis.wavelets import SUBBANDS_2D
from medvae_engine.errors import InputError
from medvae_engine.imaging.volume import Volume


@pytest.fixture(scope="module")
def brain():
    """A small real MRI block (MNI template) with its real affine, plus degraded versions."""
    img = load_mni152_template(resolution=1)
    block = np.asarray(img.get_fdata(), np.float32)[60:124, 80:144, 90:96]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ [60, 80, 90] + img.affine[:3, 3]
    ref = Volume(block, affine, "mri")
    test = ref.with_array(ndimage.gaussian_filter(block, (1.2, 1.2, 0)))
    ae = ref.with_array(ndimage.gaussian_filter(block, (0.6, 0.6, 0)))
    return ref, test, ae


def test_maps_align_with_the_reference(brain):
    ref, test, ae = brain
    maps = compute_maps(ref, test, ae, k=2.0, axis=2)
    expected = {"difference", "abs_error", "local_psnr", "local_ssim", "hallucination"} | {
        f"subband_{b}" for b in SUBBANDS_2D}
    assert set(maps) == expected
    for vol in maps.values():
        assert vol.shape == ref.shape
        assert np.array_equal(vol.affine, ref.affine)
    assert np.allclose(maps["difference"].array, test.array - ref.array, atol=1e-4)
    assert np.allclose(sum(maps[f"subband_{b}"].array for b in SUBBANDS_2D),
                       maps["difference"].array, atol=1e-3)
    lo, hi = float(ref.array.min()), float(ref.array.max())
    r01, t01 = (ref.array[:, :, 3] - lo) / (hi - lo), (test.array[:, :, 3] - lo) / (hi - lo)
    assert np.allclose(maps["local_ssim"].array[:, :, 3], ssim_map(r01, t01), atol=1e-5)
    assert np.allclose(maps["local_psnr"].array[:, :, 3], local_psnr_map(r01, t01), atol=1e-3)
    labels = maps["hallucination"].array
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any()


def test_geometry_mismatch_is_an_error_unless_resampling(brain):
    ref, test, _ = brain
    shifted = Volume(test.array, test.affine.copy(), "mri")
    shifted.affine[0, 3] += 2.0
    with pytest.raises(InputError, match="sr.nii.gz.*affine.*--resample"):
        check_geometry(ref, shifted, "sr.nii.gz")
    with pytest.raises(InputError, match="shape"):
        check_geometry(ref, Volume(test.array[:-1], test.affine, "mri"), "sr.nii.gz")
    resampled = check_geometry(ref, shifted, "sr.nii.gz", resample=True)
    assert resampled.shape == ref.shape and np.array_equal(resampled.affine, ref.affine)
    # +2 mm in world x on a 1 mm grid: reference voxel i sees moving voxel i - 2 * sign
    sign = int(np.sign(ref.affine[0, 0]))
    expected = np.roll(test.array, 2 * sign, axis=0)
    assert np.allclose(resampled.array[5:-5], expected[5:-5], atol=1e-3)
    assert check_geometry(ref, test, "same") is test


def test_3d_subband_maps_option(brain):
    ref, test, _ = brain
    block = Volume(np.repeat(ref.array, 2, axis=2), ref.affine, "mri")  # 12 slices
    blurred = block.with_array(ndimage.gaussian_filter(block.array, 1.0))
    maps = compute_maps(block, blurred, subband_3d=True, axis=2)
    assert "subband_LLL3" in maps and "subband_HHH1" in maps and "hallucination" not in maps
    total = sum(v.array for k, v in maps.items() if k.startswith("subband_"))
    assert np.allclose(total, blurred.array - block.array, atol=1e-3)
