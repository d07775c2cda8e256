"""LPIPS-AlexNet and FID: our modules against direct computations with random weights."""

import numpy as np
import pydicom
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from medvae_engine.analysis import perceptual as p
from medvae_engine.analysis.metrics import Unavailable
from medvae_engine.models.lpips import ALEX_CHANNELS

CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def ct():
    a = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")).pixel_array.astype(float)
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


@pytest.fixture
def random_weights(tmp_path):
    """A torchvision-layout AlexNet file and an lpips-layout heads file, random values."""
    g = torch.Generator().manual_seed(0)
    backbone = {}
    for i, (out, inp, k) in CONVS.items():
        weight = torch.randn(out, inp, k, k, generator=g) * (inp * k * k) ** -0.5
        backbone[f"features.{i}.weight"] = weight
        backbone[f"features.{i}.bias"] = torch.randn(out, generator=g) * 0.1
    backbone["classifier.1.weight"] = torch.zeros(2, 2)  # present in torchvision files, unused
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
             for i, c in enumerate(ALEX_CHANNELS)}
    torch.save(backbone, tmp_path / "alexnet.pth")
    torch.save(heads, tmp_path / "alex.pth")
    return tmp_path / "alexnet.pth", tmp_path / "alex.pth", backbone, heads


def direct_lpips(x, y, backbone, heads):
    """LPIPS written out with functional ops: the independent reference."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(img):
        h = ((img.repeat(1, 3, 1, 1) * 2 - 1) - shift) / scale
        out = []
        for i in (0, 3, 6, 8, 10):
            if i in (3, 6):
                h = F.max_pool2d(h, 3, 2)
            stride, pad = (4, 2) if i == 0 else (1, CONVS[i][2] // 2)
            h = F.relu(F.conv2d(h, backbone[f"features.{i}.weight"],
                                backbone[f"features.{i}.bias"], stride=stride, padding=pad))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0])
    for j, (a, b) in enumerate(zip(feats(x), feats(y), strict=True)):
        a = a / (torch.sqrt((a**2).sum(1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt((b**2).sum(1, keepdim=True)) + 1e-10)
        w = heads[f"lin{j}.model.1.weight"].view(1, -1, 1, 1)
        total += ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_direct_computation(random_weights):
    bb_path, heads_path, backbone, heads = random_weights
    model = p.load_lpips(bb_path, heads_path)
    ref = ct()
    test = np.clip(ref + 0.05 * np.random.default_rng(0).standard_normal(ref.shape), 0, 1)
    got = p.lpips_distance(ref, test, model)
    expected = direct_lpips(torch.tensor(ref)[None, None], torch.tensor(test, dtype=torch.float32)
                            [None, None], backbone, heads)
    assert got == pytest.approx(float(expected), rel=1e-4)
    assert got > 0
    assert p.lpips_distance(ref, ref, model) == pytest.approx(0, abs=1e-6)
    stack = p.lpips_distance(np.stack([ref, ref]), np.stack([test, ref]), model)
    assert stack == pytest.approx(got / 2, rel=1e-4)


def test_lpips_unavailable_names_the_missing_file(tmp_path, random_weights):
    missing = tmp_path / "nowhere" / "alexnet-owt-7be5be79.pth"
    res = p.load_lpips(missing, random_weights[1])
    assert isinstance(res, Unavailable) and str(missing) in res.reason
    assert p.lpips_distance(ct(), ct(), res) is res
    res = p.load_lpips(random_weights[0], tmp_path / "no_heads.pth")
    assert isinstance(res, Unavailable) and "no_heads.pth" in res.reason


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    f1 = rng.standard_normal((200, 16))
    f2 = rng.standard_normal((150, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3
    mu1, s1 = p.feature_statistics(f1)
    mu2, s2 = p.feature_statistics(f2)
    assert np.allclose(s1, np.cov(f1, rowvar=False)) and np.allclose(mu2, f2.mean(0))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert p.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert p.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_fid_with_a_torchscript_extractor(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    path = tmp_path / "extractor.pt"
    torch.jit.script(net).save(str(path))
    extractor = p.load_feature_extractor(path)
    ref = ct()
    rng = np.random.default_rng(0)
    refs = [np.roll(ref, s, axis=0) for s in range(0, 60, 6)]
    noisy = [np.clip(r + 0.2 * rng.standard_normal(r.shape), 0, 1).astype(np.float32)
             for r in refs]
    value = p.fid(refs, noisy, extractor, size=64)

    def feats(images):
        x = torch.cat([F.interpolate(torch.tensor(i)[None, None], size=(64, 64), mode="bilinear",
                                     align_corners=False) for i in images]).repeat(1, 3, 1, 1)
        with torch.no_grad():
            return net(x).double().numpy()

    fr, ft = feats(refs), feats(noisy)
    expected = (((fr.mean(0) - ft.mean(0)) ** 2).sum() + np.trace(np.cov(fr, rowvar=False))
                + np.trace(np.cov(ft, rowvar=False)) - 2 * np.trace(scipy.linalg.sqrtm(
                    np.cov(fr, rowvar=False) @ np.cov(ft, rowvar=False)).real))
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert value > p.fid(refs, refs, extractor, size=64)
    missing = p.load_feature_extractor(tmp_path / "inception.pt")
    assert isinstance(missing, Unavailable) and "inception.pt" in missing.reason
    assert isinstance(p.fid(refs, noisy, missing), Unavailable)
