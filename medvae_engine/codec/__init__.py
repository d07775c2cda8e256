"""The codec layer: encode, decode and reconstruct images with any codec named by one spec."""
