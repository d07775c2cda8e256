"""MedVAE training: config schema, data, losses, stage recipes and the DDP/AMP trainer.

Entry points: `medvae_engine.training.trainer.run_training` and the CLI hooks in `cli_train`.
"""
