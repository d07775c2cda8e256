"""Training data options for large radiographs (issue 16 item 6), on the real RG1_UNCR chest X-ray:
a per-source region keeps the held-out half out of every crop, flat crops come at their configured
share, large crops at theirs, and every sample stays a pure function of (seed, step, index)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medvae_engine.data.sources import ImageRef, load_image
from medvae_engine.errors import ConfigError
from medvae_engine.training.config import load_config
from medvae_engine.training.data import MIN_CROP_STD, PatchDataset, load_sources

RG1 = "builtin:pydicom/RG1_UNCR.dcm"
LEFT = {"path": RG1, "region": [None, [0.0, 0.5]]}
RIGHT = {"path": RG1, "region": [None, [0.5, 1.0]]}
NO_AUGMENT = {"flips": False, "contrast": 0.0}


@pytest.fixture(scope="module")
def rg1_full() -> np.ndarray:
    """The whole radiograph in model space, read without any region."""
    path = Path(get_testdata_file("RG1_UNCR.dcm"))
    return load_image(ImageRef(path, None, (0, 1, 2), "auto", None, "RG1"))


def _dataset(write_config, data: dict, batch: int = 4):
    config = load_config(write_config({"data": {"augment": NO_AUGMENT, **data}}))
    train, val = load_sources(config)
    return PatchDataset(train, config, 4, 1, batch, 2, held_out=val), train, val


def _positions(full: np.ndarray, crop: np.ndarray) -> list[tuple[int, int]]:
    """Every (row, column) where ``crop`` sits exactly in ``full``."""
    s = crop.shape[0]
    rows, cols = np.nonzero(full[: full.shape[0] - s + 1, : full.shape[1] - s + 1] == crop[0, 0])
    return [(r, c) for r, c in zip(rows, cols, strict=True)
            if np.array_equal(full[r:r + s, c:c + s], crop)]


def test_region_keeps_the_held_out_half_out_of_every_crop(write_config, rg1_full):
    """Each crop of 30 steps (small and large sides) is found in the radiograph; crops found at one
    place only all lie in the left half's columns, none reaches the held-out right half."""
    dataset, train, val = _dataset(write_config, {
        "train": [LEFT], "val": [RIGHT, "builtin:pydicom/MR_small.dcm"], "crop": [64, 96],
        "large_crop": [192, 256], "large_share": 0.3, "flat_share": 0.2}, batch=3)
    split = round(0.5 * rg1_full.shape[1])
    assert train.arrays[0].shape == (rg1_full.shape[0], split)
    assert np.array_equal(val.arrays[0], rg1_full[:, split:])  # held out: the other columns
    sides, unique = set(), 0
    for index in range(30 * 3):
        crop = dataset[index][0].numpy()
        sides.add(crop.shape[0])
        where = _positions(rg1_full, crop)
        assert where, f"crop {index} is not a piece of the radiograph"
        assert any(c + crop.shape[1] <= split for _, c in where), f"crop {index} not in the left half"
        if len(where) == 1:
            unique += 1
            assert where[0][1] + crop.shape[1] <= split
    assert unique >= 60 and max(sides) >= 192 and min(sides) <= 96


def test_flat_crops_come_at_the_configured_share(write_config):
    """Without flat_share every flat crop (SD <= MIN_CROP_STD) is redrawn; with it, that share of
    the crops is flat (the radiograph's right half has wide uniform regions)."""
    n = 400
    for share, lo, hi in ((0.0, 0.0, 0.01), (0.3, 0.22, 0.38)):
        dataset, _, _ = _dataset(write_config, {"train": [RIGHT], "val": [LEFT], "crop": [64, 64],
                                                "flat_share": share})
        flat = np.mean([dataset[i].std().item() <= MIN_CROP_STD for i in range(n)])
        assert lo <= flat <= hi, (share, flat)


def test_large_crops_come_at_their_share_of_steps_and_samples_are_pure(write_config):
    dataset, _, _ = _dataset(write_config, {"train": [LEFT], "crop": [64, 96],
                                            "large_crop": [192, 256], "large_share": 0.2,
                                            "flat_share": 0.2})
    sides = np.array([dataset.crop_side(step) for step in range(2000)])
    large = sides >= 192
    assert 0.17 <= large.mean() <= 0.23
    assert set(sides[large]) <= set(range(192, 257, 4)) and set(sides[~large]) <= set(range(64, 97, 4))
    assert len(set(sides[large])) > 5
    # the same (seed, step, index) gives the same crop in a fresh dataset, in any order
    order = [13, 2, 7, 40, 2]
    first = [dataset[i] for i in order]
    again, _, _ = _dataset(write_config, {"train": [LEFT], "crop": [64, 96],
                                          "large_crop": [192, 256], "large_share": 0.2,
                                          "flat_share": 0.2})
    assert all(torch.equal(a, again[i]) for a, i in zip(first, order, strict=True))
    assert not torch.equal(first[0], first[1])


def test_train_and_held_out_may_share_an_image_only_in_disjoint_regions(write_config):
    for train, val in (([RG1], [RIGHT]), ([LEFT], [RG1]),
                       ([{"path": RG1, "region": [None, [0.0, 0.6]]}], [RIGHT])):
        config = load_config(write_config({"data": {"train": train, "val": val}}))
        with pytest.raises(ConfigError, match="overlapping regions"):
            load_sources(config)
    train, val = load_sources(load_config(write_config({"data": {"train": [LEFT], "val": [RIGHT]}})))
    assert train.refs[0].label.endswith("[:, 0:0.5]") and val.refs[0].label.endswith("[:, 0.5:1]")


@pytest.mark.parametrize("data, key", [
    ({"train": [{"path": RG1, "region": [None, [0.5, 0.2]]}]}, "data.train[0].region"),
    ({"val": [{"path": RG1, "region": [[0.0, 1.5], None]}]}, "data.val[0].region"),
    ({"train": [{"path": RG1, "region": []}]}, "data.train[0].region"),
    ({"train": [{"path": RG1, "region": "left"}]}, "data.train[0].region"),
    ({"flat_share": 1.5}, "data.flat_share"),
    ({"large_share": 0.1}, "data.large_crop"),
    ({"large_share": 0.1, "large_crop": [256, 192]}, "data.large_crop"),
])
def test_bad_region_and_share_values_name_the_key(write_config, data, key):
    path = write_config({"data": data})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"'{key}'" in str(info.value) and str(path) in str(info.value)


def test_region_with_the_wrong_number_of_axes_names_the_file(write_config):
    config = load_config(write_config({"data": {"train": [{"path": RG1, "region": [None]}]}}))
    with pytest.raises(ConfigError, match=r"RG1_UNCR\.dcm: region lists 1 axes, the image has 2"):
        load_sources(config)


def test_coarse_crops_are_block_means_of_a_larger_region_of_the_image(write_config, rg1_full):
    """``augment.coarsen``: a crop read at coarser voxels equals, at some position of the real
    radiograph, the image box-filtered over (ky, kx) and sampled every (ky, kx) pixels (a separate
    computation: scipy's box filter), with its per-axis factors drawn at the configured share."""
    from scipy import ndimage

    dataset, train, _ = _dataset(write_config, {
        "train": [LEFT], "val": [RIGHT], "crop": [32, 32],
        "augment": {**NO_AUGMENT, "coarsen": 0.5, "max_coarsen": 3}}, batch=2)
    image = train.arrays[0].astype(np.float64)
    factors = [dataset.coarse_factors(index // 2, index % 2) for index in range(200)]
    assert 0.38 <= np.mean([f is not None for f in factors]) <= 0.62
    assert {k for f in factors if f for k in f} == {1, 2, 3}
    checked = 0
    for index, f in enumerate(factors[:40]):
        if f is None or f == (1, 1):
            continue
        crop = dataset[index][0].numpy().astype(np.float64)
        boxed = ndimage.uniform_filter(image, size=f, mode="constant", origin=[-(k // 2) for k in f])
        rows, cols = np.nonzero(np.isclose(boxed, crop[0, 0], atol=1e-5))
        found = any(
            r + 31 * f[0] < image.shape[0] and c + 31 * f[1] < image.shape[1]
            and np.allclose(boxed[r:r + 32 * f[0]:f[0], c:c + 32 * f[1]:f[1]], crop, atol=1e-5)
            for r, c in zip(rows, cols, strict=True))
        assert found, (index, f)
        checked += 1
    assert checked >= 5
