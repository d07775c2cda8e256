"""Evaluation toolkit: distortion, perceptual, wavelet, hallucination, spectral and latent metrics,
paired statistics, voxel-aligned maps and the `medvae analyze` report.

Conventions (docs: FACTS section 2). 2D arrays passed to the metric functions are floats in
[0, 1] compared with data range 1; map physical units first with
``to_unit_range(array, reference_range(reference))`` or a given window (e.g. CT -1000..1000).

Metrics (arrays in [0, 1]):
    psnr(reference, test, region=None)           dB, inf for identical images
    ssim(reference, test, region=None)           Gaussian SSIM as scikit-image
    ms_ssim(reference, test)                     MsSsimResult (fewer scales below 161 px) or
                                                 Unavailable(reason)
    subband_psnr(reference, test)                {'LL3', 'LH3', ..., 'HH1'} -> dB (3-level Haar)
    hallucination(reference, test, ae, k=2.0)    tau, rates, magnitudes, label map (1 / 2)
    radial_spectrum(image, bins=10)              mean log10 power per radial bin
    compare_latents(test, reference)             MSE / cosine / PSNR per pooled scale
    region_mask(shape, mask, boxes)              restrict any metric to a lesion or boxes
Perceptual (local weights only; Unavailable with the missing file otherwise):
    load_lpips(backbone, heads), lpips_distance(reference, test, model)
    feature_statistics(features), frechet_distance(mu1, s1, mu2, s2), fid(refs, tests, extractor)
Statistics: paired_comparison(a, b) (Wilcoxon, Cohen's d / d_z, rank-biserial, bootstrap or t CIs,
    Bland-Altman; also the reader study's paired differences) and the single functions in `stats`.
Volumes: compute_maps(reference, test, ae) -> overlay maps as Volumes in the reference geometry.
CLI: `report.add_analyze_arguments(parser)` and `report.run_analyze(args)` implement
    `medvae analyze`.
"""

from .hallucination import HallucinationResult, hallucination
from .latent_compare import compare_latents
from .maps import check_geometry, compute_maps
from .metrics import (
    MsSsimResult,
    Unavailable,
    ms_ssim,
    psnr,
    reference_range,
    region_mask,
    ssim,
    to_unit_range,
)
from .perceptual import feature_statistics, fid, frechet_distance, load_lpips, lpips_distance
from .spectrum import radial_spectrum
from .stats import paired_comparison
from .wavelets import subband_error_maps, subband_psnr

__all__ = [
    "HallucinationResult", "MsSsimResult", "Unavailable", "check_geometry", "compare_latents",
    "compute_maps", "feature_statistics", "fid", "frechet_distance", "hallucination",
    "load_lpips", "lpips_distance", "ms_ssim", "paired_comparison", "psnr", "radial_spectrum",
    "reference_range", "region_mask", "ssim", "subband_error_maps", "subband_psnr",
    "to_unit_range",
]
