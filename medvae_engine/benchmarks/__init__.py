"""Benchmarks behind `medvae bench`: speed, quality, SR, encoding and CAD efficiency; model cards."""
