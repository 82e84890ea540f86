"""Data: download (checksums, safe extraction), the canonical HDF5 stores, class-balanced
training subsets, and the in-memory batches and augmentation every trainer draws from."""
