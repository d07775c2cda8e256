"""MedVAE training: config schema, data, losses, stage recipes and the DDP/AMP trainer.

Entry points: `medvae_engine.training.trainer.run_training` and its command line in `medvae_engine.cli.train`.
"""
