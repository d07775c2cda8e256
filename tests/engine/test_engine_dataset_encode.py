"""`medvae encode DATASET -o latents/` on real files: every input found and kept apart, resume only
when the same bytes met the same model, failures recorded instead of stopping, torchrun shards."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_model
from pydicom.data import get_testdata_file

from medvae_engine.cli import main
from medvae_engine.codec.dataset import Encoder, encode_dataset, find_inputs, latent_path
from medvae_engine.codec.latents import load_latent, sidecar_path
from medvae_engine.codec.pipeline import CodecOptions, encode
from medvae_engine.imaging.io import read_volume
from medvae_engine.models import save_model
from medvae_engine.runtime.progress import run

SAMPLES = Path(__file__).resolve().parents[2] / "medvae_engine" / "sample_data"
CT, MR = SAMPLES / "ct_small.nii.gz", SAMPLES / "mr_small.nii.gz"
CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    return dst


def _single(capsys, tmp_path, src, model) -> np.ndarray:
    """The latent one plain single-file encode gives: the reference a dataset latent must equal."""
    ref = tmp_path / "ref" / f"{abs(hash(str(src)))}.latent.nii.gz"
    code, _, err = _cli(capsys, "encode", src, "-m", model, "-o", ref)
    assert code == 0, err
    return load_latent(ref).array


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latents(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.latent.nii.gz"))


@pytest.mark.parametrize("listing", ["folder", "csv"])
def test_same_named_files_in_subfolders_get_distinct_latents(tmp_path, capsys, tiny_2d_path,
                                                             listing):
    data = tmp_path / "data"
    a, b = _copy(CT, data / "a" / "image.nii.gz"), _copy(MR, data / "b" / "image.nii.gz")
    source = data
    if listing == "csv":
        source = data / "list.csv"
        source.write_text("path\na/image.nii.gz\nb/image.nii.gz\n")
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", source, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 2, skipped 0" in stdout
    assert _latents(out) == ["a/image.latent.nii.gz", "b/image.latent.nii.gz"]
    for src, rel in ((a, "a"), (b, "b")):
        latent = load_latent(out / rel / "image.latent.nii.gz")
        np.testing.assert_array_equal(latent.array, _single(capsys, tmp_path, src, tiny_2d_path))
        assert latent.image_shape == read_volume(src).shape
        assert sidecar_path(out / rel / "image.latent.nii.gz").is_file()


def test_nifti_files_in_nested_subfolders_are_walked(tmp_path, capsys, tiny_2d_path):
    data = tmp_path / "data"
    _copy(MR, data / "top.nii.gz")
    _copy(CT, data / "site1" / "case1" / "scan.nii.gz")
    (data / "site2").mkdir()
    nib.save(nib.load(MR), data / "site2" / "scan.nii")  # uncompressed NIfTI is an image too
    (data / "site1" / "notes.txt").write_text("not an image")
    (data / "site2" / ".hidden.nii.gz").write_bytes(b"editor temp file")
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 3, skipped 0" in stdout
    assert _latents(out) == ["site1/case1/scan.latent.nii.gz", "site2/scan.latent.nii.gz",
                             "top.latent.nii.gz"]


def test_dicom_series_subfolder_is_one_input(tmp_path, capsys, tiny_2d_path):
    data = tmp_path / "data"
    series = data / "patient7" / "CT5N"
    shutil.copytree(CT_SERIES, series)
    _copy(MR, data / "other" / "mr.nii.gz")
    _copy(CT_SERIES.parents[1] / "DICOMDIR", data / "DICOMDIR")  # DICOM, but not an image
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0, err
    assert "encoded 2, skipped 0" in stdout and "of 2 inputs" in stdout
    assert _latents(out) == ["other/mr.latent.nii.gz", "patient7/CT5N.latent.nii.gz"]
    latent = load_latent(out / "patient7" / "CT5N.latent.nii.gz")
    assert latent.image_shape == read_volume(series).shape
    assert latent.image_shape[2] == len(os.listdir(series)) == 5
    np.testing.assert_array_equal(latent.array, _single(capsys, tmp_path, series, tiny_2d_path))


def test_resume_reencodes_changed_input_and_skips_unchanged(tmp_path, capsys, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "latents"
    img = nib.load(MR)  # stored uncompressed so the edit below keeps the byte size
    changing = data / "a.nii"
    data.mkdir()
    nib.save(img, changing)
    _copy(CT, data / "b.nii.gz")
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 2, skipped 0" in stdout, err
    kept = out / "b.latent.nii.gz"
    kept_stamp = kept.stat().st_mtime_ns

    size = changing.stat().st_size
    arr = np.asarray(img.dataobj).copy()
    arr[10:30, 10:30] = arr.max()  # same file size, other voxels
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), changing)
    assert changing.stat().st_size == size
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 1, skipped 1" in stdout, err
    assert kept.stat().st_mtime_ns == kept_stamp  # the unchanged input was not re-encoded
    np.testing.assert_array_equal(load_latent(out / "a.latent.nii.gz").array,
                                  _single(capsys, tmp_path, changing, tiny_2d_path))

    code, stdout, _ = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert "encoded 0, skipped 2" in stdout
    other = tmp_path / "retrained" / tiny_2d_path.name  # same model name, other weights
    other.parent.mkdir()
    save_model(tiny_model(2, seed=1), other)
    code, stdout, err = _cli(capsys, "encode", data, "-m", other, "-o", out)
    assert code == 0 and "encoded 2, skipped 0" in stdout, err


def test_corrupt_file_is_recorded_and_the_rest_encoded(tmp_path, capsys, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "latents"
    _copy(MR, data / "a.nii.gz")
    corrupt = data / "b.nii.gz"
    corrupt.write_bytes(CT.read_bytes()[:5000])  # a real file cut short
    _copy(CT, data / "c.nii.gz")
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "1 of 3 failed" in lines[0], err
    assert "Traceback" not in err
    assert _latents(out) == ["a.latent.nii.gz", "c.latent.nii.gz"]
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "error"] and len(rows) == 2
    assert rows[1][0] == str(corrupt) and str(corrupt) in rows[1][1] and "\n" not in rows[1][1]
    assert not list(out.glob(".*tmp*"))

    _copy(MR, corrupt)  # repaired: encoded on the next run, the failures list goes away
    code, stdout, err = _cli(capsys, "encode", data, "-m", tiny_2d_path, "-o", out)
    assert code == 0 and "encoded 1, skipped 2" in stdout, err
    assert not (out / "failures.csv").exists()


def test_device_cuda_means_the_local_rank_gpu(tmp_path, capsys, monkeypatch, tiny_2d_path):
    if not torch.cuda.is_available():  # end to end: the device the CLI asks for under torchrun
        monkeypatch.setenv("LOCAL_RANK", "1")
        code, _, err = _cli(capsys, "encode", MR, "-m", tiny_2d_path, "--device", "cuda",
                            "-o", tmp_path / "x.latent.nii.gz")
        assert code == 2 and "'cuda:1'" in err, err
    from medvae_engine.runtime.distributed import rank_device

    assert rank_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert rank_device("cuda", {}) == "cuda"
    assert rank_device("cuda:0", {"LOCAL_RANK": "3"}) == "cuda:0"  # an explicit index is kept
    assert rank_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"


def test_torchrun_failures_of_every_rank_are_recorded(tmp_path, tiny_2d_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name in ("a_bad", "b_bad"):  # sorted order puts one corrupt file in each rank's shard
        (data / name).mkdir(parents=True)
        (data / name / "scan.nii.gz").write_bytes(MR.read_bytes()[:2000])
    _copy(MR, data / "c" / "scan.nii.gz")
    _copy(CT, data / "d" / "scan.nii.gz")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "medvae_engine.cli", "encode", str(data),
           "-m", str(tiny_2d_path), "-o", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert proc.stdout.count("encoded 1, skipped 0 already done, failed 1") == 2, proc.stdout
    assert proc.stderr.count("error: ") == 1 and "error: 2 of 4 failed" in proc.stderr
    assert _latents(out) == ["c/scan.latent.nii.gz", "d/scan.latent.nii.gz"]
    with open(out / "failures.csv", newline="") as f:
        failed = [row[0] for row in list(csv.reader(f))[1:]]
    assert failed == [str(data / "a_bad" / "scan.nii.gz"), str(data / "b_bad" / "scan.nii.gz")]


# -- batches across files and the reader thread ---------------------------------------------------

MNI = SAMPLES / "mri_brain_mni152.nii.gz"


def _mni_slices(folder: Path, count: int) -> list[Path]:
    """Real 2D slices of the bundled MNI152 brain, written as 2D NIfTI files (112 x 136)."""
    img = nib.load(MNI)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in np.linspace(30, 80, count).astype(int):
        path = folder / f"slice{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol[:, :, k], img.affine), path)
        paths.append(path)
    return paths


def test_batches_across_files_give_one_at_a_time_latents(tmp_path, capsys, monkeypatch):
    """Real slices, a block of the MNI152 volume (same slice shape), pydicom's MR_small/CT_small and the
    bundled 2D samples through starter_4_1_2d: batched latents equal each file's own encode."""
    from medvae_engine.models.autoencoder import AutoencoderKL

    data = tmp_path / "data"
    inputs = _mni_slices(data / "slices", 6)
    img = nib.load(MNI)  # a 12-slice block of the volume: a 2D model sees slices of (112, 136)
    inputs.append(data / "volume" / "mni.nii.gz")
    inputs[-1].parent.mkdir()
    nib.save(img.slicer[:, :, 40:52], inputs[-1])
    inputs.append(_copy(Path(get_testdata_file("MR_small.dcm")), data / "dicom" / "mr.dcm"))
    inputs.append(_copy(Path(get_testdata_file("CT_small.dcm")), data / "dicom2" / "ct.dcm"))
    inputs += [_copy(CT, data / "samples" / "ct.nii.gz"), _copy(MR, data / "samples" / "mr.nii.gz")]
    batches = []
    encode = AutoencoderKL.encode

    def counting(self, x, *a, **kw):
        batches.append(tuple(x.shape))
        return encode(self, x, *a, **kw)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    out = tmp_path / "latents"
    code, stdout, err = _cli(capsys, "encode", data, "-m", "starter_4_1_2d", "--batch-size", "8",
                             "-o", out)
    assert code == 0, err
    assert f"encoded {len(inputs)}, skipped 0" in stdout
    # sorted: MR_small, then CT_small with ct_small.nii.gz (both 128^2) in one call, mr_small;
    # then the six slice files with the volume's first two slices, and the volume's other slices
    assert batches[:4] == [(1, 1, 64, 64), (2, 1, 128, 128), (1, 1, 64, 64), (8, 1, 112, 136)]
    assert sum(b[0] for b in batches[3:]) == 6 + 12
    batches.clear()
    latents = {i.path: latent_path(i) for i in find_inputs([data])}
    for src in inputs:
        src = src.parent if src.suffix == ".dcm" else src  # a folder of DICOM files: a series
        ref = tmp_path / "ref" / "one.latent.nii.gz"
        code, _, err = _cli(capsys, "encode", src, "-m", "starter_4_1_2d", "--batch-size", "1",
                            "-o", ref)
        assert code == 0, err
        want, got = load_latent(ref).array, load_latent(out / latents[src]).array
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.ptp(want), err_msg=str(src))
    assert {b[0] for b in batches} == {1}  # the references really were one slice at a time


def _reader_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "medvae-dataset-reader" and t.is_alive()]


def test_reader_thread_reads_ahead_and_stops_when_the_generator_is_closed(tmp_path):
    """Files are read by the reader thread while the model runs; closing the generator after the
    first latent (as a cancel does) leaves no reader thread alive and no further latent written."""
    paths = _mni_slices(tmp_path / "data", 8)
    jobs = [(i, tmp_path / "out" / latent_path(i)) for i in find_inputs([tmp_path / "data"])]
    model = tiny_model(2)
    readers = []

    def read(item):
        readers.append(threading.current_thread().name)
        return read_volume(item.path)

    encoder = Encoder(lambda ndim: model, CodecOptions(batch_size=1))
    steps = encode_dataset(jobs, read, encoder, prefetch=2)
    first = next(steps)
    assert first.stage == "encoded" and first.payload.target.is_file()
    assert len(_reader_threads()) == 1  # still reading ahead
    steps.close()
    assert _reader_threads() == []
    assert set(readers) == {"medvae-dataset-reader"} and len(readers) <= 1 + 1 + 2  # bounded
    assert sorted((tmp_path / "out").glob("*.latent.nii.gz")) == [first.payload.target]
    np.testing.assert_array_equal(load_latent(first.payload.target).array,
                                  encode(read_volume(paths[0]), model).array)


def test_prefetched_failure_is_recorded_and_the_batch_encoded(tmp_path):
    """A truncated file read ahead by the thread among real slices batched 4 at a time: recorded
    with its one-line error; every other slice's latent equals its own one-at-a-time encode."""
    paths = _mni_slices(tmp_path / "data", 6)
    paths[2].write_bytes(paths[2].read_bytes()[:300])
    jobs = [(i, tmp_path / "out" / latent_path(i)) for i in find_inputs([tmp_path / "data"])]
    model = tiny_model(2)
    encoder = Encoder(lambda ndim: model, CodecOptions(batch_size=4))
    steps = encode_dataset(jobs, lambda item: read_volume(item.path), encoder, lambda n: ("x", None))
    statuses = []
    try:
        while True:
            statuses.append(next(steps).stage)
    except StopIteration as stop:
        summary = stop.value
    assert sorted(statuses) == ["encoded"] * 5 + ["failed"]
    assert summary.encoded == 5 and [f[0] for f in summary.failures] == [str(paths[2])]
    assert str(paths[2]) in summary.failures[0][1] and "\n" not in summary.failures[0][1]
    assert _reader_threads() == []
    for path in paths[:2] + paths[3:]:
        got = load_latent(tmp_path / "out" / path.name.replace(".nii.gz", ".latent.nii.gz")).array
        want = encode(read_volume(path), model, CodecOptions(batch_size=1)).array
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.ptp(want))


def test_failed_batch_is_retried_one_input_at_a_time(tmp_path):
    """A model call over a whole batch fails (as when a batch does not fit in memory): each input
    of the batch is encoded alone instead, to the same latents, and none is recorded as failed."""
    paths = _mni_slices(tmp_path / "data", 4)
    jobs = [(i, tmp_path / "out" / latent_path(i)) for i in find_inputs([tmp_path / "data"])]
    model, calls = tiny_model(2), []

    class SmallBatchesOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.factor, self.spatial_dims, self.in_channels = 4, 2, 1

        def encode(self, x, **kw):
            calls.append(len(x))
            if len(x) > 1:
                raise RuntimeError("not enough memory")
            return model.encode(x, **kw)

    fussy = SmallBatchesOnly()
    encoder = Encoder(lambda ndim: fussy, CodecOptions(batch_size=4))
    summary = run(encode_dataset(jobs, lambda item: read_volume(item.path), encoder))
    assert calls == [4, 1, 1, 1, 1] and summary.encoded == 4 and summary.failures == []
    for path in paths:
        got = load_latent(tmp_path / "out" / path.name.replace(".nii.gz", ".latent.nii.gz")).array
        np.testing.assert_array_equal(got, encode(read_volume(path), model).array)


def test_progress_of_each_input_carries_its_outcome(tmp_path):
    """The one Progress protocol: stage says what happened to each input, the payload which input,
    its target and its latent or its one-line error; a truncated real slice is reported failed."""
    paths = _mni_slices(tmp_path / "data", 4)
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    jobs = [(i, tmp_path / "out" / latent_path(i)) for i in find_inputs([tmp_path / "data"])]
    model = tiny_model(2)
    seen = []
    summary = run(encode_dataset(jobs, lambda item: read_volume(item.path),
                                 Encoder(lambda ndim: model, CodecOptions(batch_size=2))),
                  seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4] and {p.total for p in seen} == {4}
    failed = [p for p in seen if p.stage == "failed"]
    assert len(failed) == 1 and failed[0].payload.item.path == paths[1]
    assert failed[0].payload.latent is None and not failed[0].payload.target.exists()
    assert summary.failures == [(str(paths[1]), failed[0].payload.error)]
    assert str(paths[1]) in failed[0].payload.error and "\n" not in failed[0].payload.error
    for p in seen:
        assert p.info["input"] == p.payload.item.relative.as_posix()
        if p.stage == "encoded":
            np.testing.assert_array_equal(load_latent(p.payload.target).array,
                                          p.payload.latent.array)
    assert sorted(p.stage for p in seen) == ["encoded"] * 3 + ["failed"]
