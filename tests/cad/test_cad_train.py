"""End to end: ``cad train`` on a CSV of real-image crops, ``cad proxy`` at a tiny setting,
classifier families, caching and CSV validation."""

import argparse
import json

import numpy as np
import pytest
import torch

from medvae_engine.cad.datasets import cached_represent, load_input, read_labelled_csv
from medvae_engine.cad.models import build_classifier
from medvae_engine.cad.proxy import LesionSpec, background_crops, insert_lesions, load_backgrounds
from medvae_engine.cli import cad as cli_cad
from medvae_engine.errors import InputError, ModelError
from medvae_engine.imaging.io import write_volume
from medvae_engine.imaging.volume import Volume
from medvae_engine.models import AutoencoderKL, save_model


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_model(AutoencoderKL(2, 1, 1, 32, (1, 2, 4), 1, 1),
                          tmp_path_factory.mktemp("ae") / "tiny_f4.safetensors"))


@pytest.fixture(scope="module")
def lesion_csv(tmp_path_factory):
    """24 real CT/MR crops as NIfTI files, strong lesions in half of them, listed in a CSV."""
    folder = tmp_path_factory.mktemp("csv")
    stacks = load_backgrounds(("pydicom/CT_small.dcm", "dipy/S0_10slices"))
    crops, _ = background_crops(24, 32, seed=0, stacks=stacks)
    data = insert_lesions(crops, LesionSpec(kind="spots", contrast=0.8, spot_fwhm=4.0), seed=0)
    lines = ["path,label"]
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        # a fixed window keeps every file's normalisation identical to the crop's model space
        image = image.copy()
        image[0, 0], image[0, 1] = -1.0, 1.0
        write_volume(Volume(image, np.eye(4), "other", {}), folder / f"img{i}.nii.gz")
        lines.append(f"img{i}.nii.gz,{'lesion' if label else 'normal'}")
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return folder / "data.csv"


def _cad_args(argv):
    parser = argparse.ArgumentParser()
    cli_cad.add_cad_arguments(parser)
    return parser.parse_args(argv)


def test_cad_train_end_to_end(lesion_csv, tiny_ae, tmp_path):
    out = tmp_path / "res.json"
    args = _cad_args([
        "train", str(lesion_csv), "--inputs", "image", "bicubic@4", tiny_ae, "--arch", "resnet10",
        "--epochs", "2", "--batch-size", "8", "--seeds", "0", "1", "--cache", str(tmp_path / "c"),
        "-o", str(out), "--markdown", str(tmp_path / "res.md"),
    ])
    assert cli_cad.run_cad(args) == 0
    res = json.loads(out.read_text())
    assert res["classes"] == ["lesion", "normal"] and res["metric"] == "binary AUROC"
    assert res["n_train"] + res["n_test"] == 24
    assert res["train"]["arch"] == "resnet10" and res["train"]["seeds"] == [0, 1]
    shapes = {k: v["input_shape"] for k, v in res["inputs"].items()}
    assert shapes == {"image": [1, 32, 32], "bicubic@4": [1, 8, 8], tiny_ae: [1, 8, 8]}
    for r in res["inputs"].values():
        assert len(r["auroc"]) == 2 and all(0.0 <= v <= 1.0 for v in r["auroc"])
        assert r["mean"] == pytest.approx(np.mean(r["auroc"]))
        assert r["sd"] == pytest.approx(np.std(r["auroc"], ddof=1))
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2  # the latent and the baseline cached
    assert "| bicubic@4 | (1, 8, 8) |" in (tmp_path / "res.md").read_text()


def test_cached_latents_are_reused(tmp_path, tiny_ae, monkeypatch):
    kind = load_input(tiny_ae)
    arrays = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    first = cached_represent(arrays, kind, tmp_path)
    assert first.shape == (3, 1, 4, 4)
    monkeypatch.setattr("medvae_engine.cad.datasets.represent", lambda *a, **k: 1 / 0)
    np.testing.assert_array_equal(cached_represent(arrays, kind, tmp_path), first)
    with pytest.raises(ZeroDivisionError):  # other pixels are a cache miss
        cached_represent(arrays + 0.1, kind, tmp_path)


def test_cad_proxy_tiny(tmp_path):
    out = tmp_path / "proxy.json"
    args = _cad_args([
        "proxy", "--inputs", "image", "bicubic@4", "--contrasts", "0.3", "0.6", "--side", "32",
        "--n-train", "16", "--n-test", "12", "--arch", "resnet10", "--epochs", "1",
        "--batch-size", "8", "--seeds", "0", "--cache", "", "-o", str(out),
    ])
    assert cli_cad.run_cad(args) == 0
    res = json.loads(out.read_text())
    assert [(r["input"], r["contrast"]) for r in res["rows"]] == [
        ("image", 0.3), ("bicubic@4", 0.3), ("image", 0.6), ("bicubic@4", 0.6)]
    assert {r["factor"] for r in res["rows"]} == {1, 4}


@pytest.mark.parametrize("arch", ["resnet10", "seresnet50", "densenet121"])
def test_classifier_families_on_image_and_latent_sizes(arch):
    for shape in [(1, 64, 64), (4, 8, 8)]:
        net = build_classifier(arch, 2, shape[0], 3, shape[1:])
        assert net(torch.zeros(2, *shape)).shape == (2, 3)
    assert build_classifier("resnet10", 3, 1, 2, (8, 8, 8))(torch.zeros(2, 1, 8, 8, 8)).shape == (2, 2)


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown classifier"):
        build_classifier("resnet11", 2, 1, 2, (32, 32))
    with pytest.raises(ModelError, match="too small"):
        build_classifier("densenet121", 2, 1, 2, (4, 4), stem="standard")
    with pytest.raises(ModelError, match="factor"):
        load_input("bicubic")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.nii,1\n")
    with pytest.raises(InputError, match="'path' and 'label'"):
        read_labelled_csv(bad)
    bad.write_text("path,label\nmissing.nii,1\n")
    with pytest.raises(InputError, match="not found"):
        read_labelled_csv(bad)


def test_confident_networks_still_rank_their_test_cases():
    """Logits far apart saturate softmax to exactly 1 for every case (AUROC 0.5 from ties); the
    scores used are per-class log-odds, which keep the order."""
    from medvae_engine.cad.auroc import auroc
    from medvae_engine.cad.train import predict

    class Confident(torch.nn.Module):
        def forward(self, x):
            v = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([torch.zeros_like(v), 60.0 + 10.0 * v], dim=1)

    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(40, 1, 1, 1)
    labels = (x.ravel() > 0).astype(int)
    assert (torch.softmax(Confident()(torch.from_numpy(x)), 1)[:, 1] == 1.0).all()
    scores = predict(Confident(), x, 8, "cpu")
    assert auroc(labels, scores) == 1.0
    np.testing.assert_allclose(scores[:, 1], 60.0 + 10.0 * x.ravel(), rtol=1e-6)  # l1 - l0


def test_multiclass_scores_are_log_odds_of_each_class_against_the_rest():
    from medvae_engine.cad.train import predict

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 2.0, 3.0]]).expand(len(x), 3)

    expected = [1 - np.logaddexp(2, 3), 2 - np.logaddexp(1, 3), 3 - np.logaddexp(1, 2)]
    np.testing.assert_allclose(predict(Fixed(), np.zeros((2, 1, 1, 1), np.float32), 2, "cpu"),
                               [expected, expected])


def test_cad_proxy_progress_counts_every_unit_of_the_whole_run(capsys):
    """One Progress protocol: encodes and training epochs of every input, seed and contrast are
    units of one total from the start, so the CLI bar's ETA covers the whole run."""
    from medvae_engine.cad.proxy import ProxySettings, run_proxy
    from medvae_engine.cad.train import TrainSettings
    from medvae_engine.runtime.cli_progress import drive

    proxy = ProxySettings(("image", "bicubic@4"), (0.3, 0.6), LesionSpec(), 32, 16, 12, 0, None)
    train = TrainSettings("resnet10", epochs=2, batch_size=8, seeds=(0, 1))
    seen = []
    results = drive(run_proxy(proxy, train), "cad proxy", unit="unit", report=seen.append)
    per_contrast = 2 + 2 * 2 * 2  # two encodes, then 2 inputs x 2 seeds x 2 epochs
    assert [p.done for p in seen] == list(range(1, 2 * per_contrast + 1))
    assert {p.total for p in seen} == {2 * per_contrast}
    assert [p.stage for p in seen[:per_contrast]] == ["encode"] * 2 + ["train"] * 8
    assert [(p.info["input"], p.info["seed"]) for p in seen[2:10:2]] == [
        ("image", 0), ("image", 1), ("bicubic@4", 0), ("bicubic@4", 1)]
    assert {p.info["contrast"] for p in seen[per_contrast:]} == {0.6}
    assert all(np.isfinite(p.info["loss"]) for p in seen if p.stage == "train")
    assert len(results["rows"]) == 4
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("1/20" in line and "<?" not in line for line in bar)
    assert "20/20" in [line for line in bar if line.strip()][-1]
