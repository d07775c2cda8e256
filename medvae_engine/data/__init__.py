"""The data layer: image references, builtin sources, folder/CSV expansion, suffixes, degradation."""
