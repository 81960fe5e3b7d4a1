"""Data: fastMRI HDF5 slices, the built-in phantoms, per-slice checks, batching."""
