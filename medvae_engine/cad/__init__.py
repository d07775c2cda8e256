"""Diagnostic (CAD) models on images vs latents: classifiers, the lesion proxy task, efficiency.

Entry points: ``medvae cad train|proxy`` (`medvae_engine.cli.cad.run_cad`) and ``medvae bench efficiency``
(`medvae_engine.cli.bench.run_efficiency`).
"""
