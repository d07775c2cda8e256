"""napari plugin for MedVAE: readers, writers, samples and docked widgets over `medvae_engine`."""

__version__ = "0.1.0"
