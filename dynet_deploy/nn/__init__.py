"""Dynamic convolution building blocks."""
