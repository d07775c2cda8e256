"""Building study folders from real DICOM/NIfTI images: blinding, de-identification, checks."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
import yaml
from nibabel.testing import data_path as nibabel_data

from medvae_engine.errors import InputError, OutputError
from medvae_engine.imaging.io import read_volume, write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.study.create import (
    create_study,
    default_key_path,
    load_key,
    spec_from_folders,
    validate_study,
)
from medvae_engine.study.session import ReaderSession
from medvae_engine.study.spec import load_study

PHI = [b"CompressedSamples", b"1CT1", b"4MR1", b"JFK IMAGING", b"CT_small", b"MR_small"]


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """Originals named after patients (two real DICOM slices, one real NIfTI volume) and two
    method folders with same-named candidates of different dtypes."""
    originals = tmp_path / "originals"
    originals.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), originals / "smith_john.dcm")
    shutil.copy(pydicom.data.get_testdata_file("MR_small.dcm"), originals / "doe_jane.dcm")
    shutil.copy(os.path.join(nibabel_data, "anatomical.nii"), originals / "roe_rick.nii")
    rng = np.random.default_rng(0)
    methods = {"sharpvae": tmp_path / "sharpvae", "blurnet": tmp_path / "blurnet"}
    for stem in ("smith_john", "doe_jane", "roe_rick"):
        source = next(originals.glob(stem + ".*"))
        volume = read_volume(source)
        noisy = volume.array + rng.normal(0, 5, volume.shape)
        write_volume(volume.with_array(noisy.astype(np.float64)),
                     methods["sharpvae"] / f"{stem}.nii.gz")
        write_volume(volume.with_array(np.round(volume.array / 2) * 2),
                     methods["blurnet"] / f"{stem}.nii.gz", dtype="int16")
    return {"originals": originals, **methods}


def build(folders, tmp_path, display="side_by_side", seed=5, **settings) -> Path:
    spec = spec_from_folders(folders["originals"],
                             {"sharpvae": str(folders["sharpvae"]),
                              "blurnet": str(folders["blurnet"])},
                             name="pilot", seed=seed, display=display, **settings)
    return create_study(spec, tmp_path / f"study_{display}")


def test_items_show_original_and_candidate_with_neutral_names(folders, tmp_path):
    study_dir = build(folders, tmp_path)
    study = load_study(study_dir)
    key = load_key(tmp_path / "study_side_by_side.key.json")
    assert len(study.items) == 6 and study.labels == ("Original", "Reconstruction")
    assert {(k["case"], k["method"]) for k in key["items"].values()} == {
        (c, m) for c in ("smith_john", "doe_jane", "roe_rick") for m in ("sharpvae", "blurnet")}
    for item in study.items:
        truth = key["items"][item.id]
        assert truth["original_side"] == "a"  # side by side: original always on the left
        original = read_volume(next(folders["originals"].glob(truth["case"] + ".*")))
        candidate = read_volume(folders[truth["method"]] / f"{truth['case']}.nii.gz")
        left, right = (read_volume(p) for p in item.images)
        low, high = truth["window"]  # both through the same window: CT [-1000, 1000] HU
        np.testing.assert_allclose(left.array, np.clip(original.array, low, high), rtol=1e-6)
        np.testing.assert_allclose(right.array, np.clip(candidate.array, low, high), rtol=1e-6,
                                   atol=1e-3)
        np.testing.assert_allclose(right.affine, original.affine, atol=1e-4)
        for path in item.images:
            assert path.name in (f"{item.id}_a.nii.gz", f"{item.id}_b.nii.gz")
            assert nib.load(path).get_data_dtype() == np.float32  # dtype cannot betray a method
    # item numbers do not follow case or method order
    numbering = [(key["items"][i.id]["case"], key["items"][i.id]["method"]) for i in study.items]
    assert numbering != sorted(numbering, key=lambda cm: (cm[0], cm[1]))


def test_navigation_and_lock_settings_reach_the_readers_study_file(folders, tmp_path):
    assert load_study(build(folders, tmp_path)).navigation
    study = load_study(build(folders, tmp_path, display="blinded_ab", navigation=False,
                             lock_after_submit=False))
    assert not study.navigation and not study.lock_after_submit


def test_reader_files_reveal_neither_patient_nor_method(folders, tmp_path):
    study_dir = build(folders, tmp_path, display="blinded_ab")
    secrets = [b"sharpvae", b"blurnet", b"smith", b"doe_jane", b"roe_rick", *PHI]
    for path in study_dir.rglob("*"):
        if path.is_dir():
            continue
        name = str(path.relative_to(study_dir)).encode()
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        for secret in secrets:
            assert secret.lower() not in name.lower(), (path, secret)
            assert secret not in data, (path, secret)
    assert b"sharpvae" in (tmp_path / "study_blinded_ab.key.json").read_bytes()


def test_blinded_sides_follow_the_seed_and_the_original_is_where_the_key_says(folders, tmp_path):
    study_dir = build(folders, tmp_path, display="blinded_ab", seed=9)
    study = load_study(study_dir)
    key = load_key(default_key_path(study_dir))
    assert study.labels == ("A", "B")
    sides = [key["items"][i]["original_side"] for i in sorted(key["items"])]
    again = build(folders, tmp_path / "again", display="blinded_ab", seed=9)
    assert sides == [v["original_side"] for _, v in sorted(load_key(
        default_key_path(again))["items"].items())]
    assert set(sides) == {"a", "b"}
    for method in ("sharpvae", "blurnet"):  # 3 items each: the original on A 1 or 2 times
        on_a = [v["original_side"] for v in key["items"].values() if v["method"] == method]
        assert abs(on_a.count("a") - on_a.count("b")) == 1
    for item in study.items:
        truth = key["items"][item.id]
        original = read_volume(next(folders["originals"].glob(truth["case"] + ".*")))
        shown = read_volume(item.images["ab".index(truth["original_side"])])
        np.testing.assert_allclose(shown.array, np.clip(original.array, *truth["window"]),
                                   rtol=1e-6)


def test_manifest_checksums_detect_missing_and_changed_files(folders, tmp_path):
    study_dir = build(folders, tmp_path)
    assert validate_study(study_dir) == []
    manifest = json.loads((study_dir / "manifest.json").read_text())
    first, second = sorted(n for n in manifest["files"] if n.startswith("images/"))[:2]
    (study_dir / first).unlink()
    with open(study_dir / second, "ab") as f:
        f.write(b"x")
    problems = validate_study(study_dir)
    assert len(problems) == 2
    assert "missing" in problems[0] + problems[1] and "checksum" in problems[0] + problems[1]


def test_missing_candidates_are_all_listed(folders):
    (folders["blurnet"] / "doe_jane.nii.gz").unlink()
    (folders["sharpvae"] / "roe_rick.nii.gz").unlink()
    with pytest.raises(InputError, match="2 candidate images missing") as info:
        spec_from_folders(folders["originals"], {"sharpvae": str(folders["sharpvae"]),
                                                 "blurnet": str(folders["blurnet"])})
    assert "blurnet/doe_jane" in str(info.value) and "sharpvae/roe_rick" in str(info.value)


def test_shape_mismatch_is_a_clear_error_and_leaves_nothing(folders, tmp_path):
    wrong = read_volume(folders["blurnet"] / "doe_jane.nii.gz")
    write_volume(Volume(wrong.array[:32], wrong.affine, wrong.modality),
                 folders["blurnet"] / "doe_jane.nii.gz")
    spec = spec_from_folders(folders["originals"], {"blurnet": str(folders["blurnet"])})
    with pytest.raises(InputError, match=r"'blurnet' of case 'doe_jane' has shape \(32, 64\)"):
        create_study(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_spec_file_with_missing_file_and_existing_output(folders, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"cases": [
        {"id": "c1", "original": "originals/smith_john.dcm",
         "candidates": {"m": "nowhere/smith_john.nii.gz"}}]}))
    from medvae_engine.study.spec import load_spec

    with pytest.raises(InputError, match="1 input files missing.*nowhere"):
        create_study(load_spec(spec_file), tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    spec = spec_from_folders(folders["originals"], {"blurnet": str(folders["blurnet"])})
    with pytest.raises(OutputError, match="already exists"):
        create_study(spec, tmp_path / "taken")


def test_codec_candidates_use_the_real_bicubic_baseline(folders, tmp_path):
    spec = spec_from_folders(folders["originals"], {"bicubic4": {"codec": "bicubic", "factor": 4}})
    study_dir = create_study(spec, tmp_path / "codec_study", key_path=tmp_path / "private.json")
    assert not (study_dir / "coordinator").exists() and not default_key_path(study_dir).exists()
    key = load_key(tmp_path / "private.json")
    for item_id, truth in key["items"].items():
        item = load_study(study_dir).item(item_id)
        original, candidate = (read_volume(p) for p in item.images)
        difference = np.abs(original.array - candidate.array).mean()
        assert 0 < difference < 0.5 * np.abs(original.array).mean()  # a lossy but close copy
        assert truth["candidate"] == {"codec": "bicubic@4"}


def test_model_candidates_go_through_load_model_and_reconstruct(folders, tmp_path, monkeypatch):
    # the model path is checked with stand-ins for the codec and the reconstruction
    from medvae_engine.study import create as create_module

    calls = []
    monkeypatch.setattr(create_module, "load_codec",
                        lambda name, weights=None: calls.append((name, weights)) or "codec")
    monkeypatch.setattr(create_module, "reconstruct",
                        lambda volume, codec: volume.with_array(volume.array * 0.5))
    spec = spec_from_folders(folders["originals"], {"vae": {"model": "starter_4_1_2d"}})
    study_dir = create_study(spec, tmp_path / "model_study")
    assert calls == [("starter_4_1_2d", None)] * 3
    item = load_study(study_dir).items[0]
    left, right = (read_volume(p) for p in item.images)
    np.testing.assert_allclose(right.array, np.clip(left.array * 0.5, *item.window), rtol=1e-6)


def test_the_key_is_written_beside_the_study_folder_not_inside(folders, tmp_path):
    study_dir = build(folders, tmp_path)
    key_path = tmp_path / "study_side_by_side.key.json"
    assert default_key_path(study_dir) == key_path.resolve()
    assert len(load_key(key_path)["items"]) == 6
    assert not [p for p in study_dir.rglob("*.json") if p.name != "manifest.json"]
    assert load_key(key_path)["spec"]["cases"][0]["candidates"]  # the spec travels with the key
    spec = spec_from_folders(folders["originals"], {"blurnet": str(folders["blurnet"])})
    with pytest.raises(OutputError, match="must not be inside the study folder"):
        create_study(spec, tmp_path / "s2", key_path=tmp_path / "s2" / "key.json")
    assert not (tmp_path / "s2").exists()
    (tmp_path / "s3.key.json").write_text("{}")
    with pytest.raises(OutputError, match="s3.key.json: a study key already exists"):
        create_study(spec, tmp_path / "s3")
    assert not (tmp_path / "s3").exists()


@pytest.mark.parametrize("inside", ["coordinator/key.json", "study_copy.key.json", "notes/a.json"])
def test_a_reader_folder_holding_its_key_is_refused(folders, tmp_path, inside):
    study_dir = build(folders, tmp_path)
    leaked = study_dir / inside
    leaked.parent.mkdir(exist_ok=True)
    shutil.copy(default_key_path(study_dir), leaked)
    problems = validate_study(study_dir)
    assert len(problems) == 1 and str(leaked) in problems[0] and "answer key" in problems[0]
    with pytest.raises(InputError, match="holds the answer key") as info:
        ReaderSession.open(study_dir, "reader1")
    assert str(leaked) in str(info.value)
    assert not (study_dir / "answers").exists()  # nothing recorded
    leaked.unlink()
    assert validate_study(study_dir) == [] and ReaderSession.open(study_dir, "reader1")


def test_ct_original_and_candidate_hold_the_same_value_range(tmp_path):
    """CT bone above +1000 HU would mark the original: both panes go through the codec window."""
    originals = tmp_path / "originals"
    originals.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), originals / "ct.dcm")
    raw = read_volume(originals / "ct.dcm").array
    assert raw.max() > 1000  # real bone above the window
    spec = spec_from_folders(originals, {"bicubic4": {"codec": "bicubic", "factor": 4},
                                         "nearest4": {"codec": "nearest", "factor": 4}},
                             display="blinded_ab", seed=1)
    study_dir = create_study(spec, tmp_path / "ct_study")
    key = load_key(default_key_path(study_dir))
    for item in load_study(study_dir).items:
        truth = key["items"][item.id]
        side = "ab".index(truth["original_side"])
        original, candidate = (read_volume(item.images[i]).array for i in (side, 1 - side))
        for pane in (original, candidate):
            assert -1000 <= pane.min() and pane.max() <= 1000, (pane.min(), pane.max())
        assert original.max() == 1000.0  # clipped as the codec clips, not 1167 HU of bone
        np.testing.assert_array_equal(original, np.clip(raw, -1000, 1000).astype(np.float32))
        assert item.window == (-1000.0, 1000.0) and truth["window"] == [-1000.0, 1000.0]
