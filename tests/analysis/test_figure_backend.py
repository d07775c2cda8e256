"""Figure writers draw on matplotlib Figure objects and leave the caller's backend alone."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import matplotlib
    import numpy as np
    from matplotlib.image import imread

    matplotlib.use("svg")  # the caller's choice; no library function may switch it
    from medvae_engine.analysis.report import write_figures
    from medvae_engine.analysis.wavelets import SUBBANDS_2D
    from medvae_engine.benchmarks import quality, sr
    from medvae_engine.benchmarks.efficiency import efficiency_figure
    from medvae_engine.study.analyze import plot_scores

    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    ref = rng.random((24, 24))
    stat = {"mean": 30.0, "sd": 1.0}
    method = {"spectrum": [1.0, 0.5, 0.2], "lpips": {"mean": 0.1, "sd": 0.01}, "psnr": stat,
              "hallucination_rate": {"mean": 0.01, "sd": 0.0}, "loss_rate": {"mean": 0.02, "sd": 0.0},
              **{f"psnr_{b}": stat for b in SUBBANDS_2D}}
    labels = np.zeros((24, 24), int)
    labels[3, 4], labels[5, 6] = 1, 2
    written = write_figures(out / "analysis", {"methods": {"a": method},
                                               "reference_spectrum": [1.0, 0.6, 0.3],
                                               "settings": {"k": 3}},
                            {"ref": ref, "tests": {"a": ref * 0.9}, "labels": {"a": labels},
                             "case": "c"})
    plot_scores({"methods": ["a"], "questions": ["q"], "study": "s",
                 "summary": [{"method": "a", "question": "q", "mean": 0.5, "ci_low": 0.1,
                              "ci_high": 0.9}]}, out / "scores.png")
    efficiency_figure({"settings": {"arch": "x"}, "cases": [
        {"dims": 2, "factor": f, "compression": f * f, "throughput": 1.0, "max_batch": 2,
         "latency_s": 0.1, "storage_bytes": 100} for f in (1, 4)]}, out / "efficiency.png")
    quality.figure({"_original": ref, "label": "l", "modality": "ct",
                    "methods": {"m": {"_recon": ref * 0.9, "psnr_db": 20.0}}}, out / "quality.png")
    sr.figure({"_original": ref, "_outputs": {"bicubic": ref * 0.9, "SR ddim-2": ref},
               "methods": {"bicubic": {"psnr_db": 20.0},
                           "SR ddim-2": {"psnr_db": 30.0, "_labels": labels}},
               "shape": [24, 24], "label": "l", "modality": "ct"}, out / "sr.png")
    for path in [*written, out / "scores.png", out / "efficiency.png", out / "quality.png",
                 out / "sr.png"]:
        assert imread(path).ndim == 3, path  # a real PNG picture
    print(len(written) + 4, matplotlib.get_backend())
    """
)


def test_figure_writers_keep_the_callers_backend(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "svg"]
