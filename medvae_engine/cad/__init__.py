"""Diagnostic (CAD) models on images vs latents: classifiers, the lesion proxy task, efficiency.

Entry points: ``medvae cad train|proxy`` (`cli_cad.run_cad`) and ``medvae bench efficiency``
(`cli_cad.run_efficiency`).
"""
