"""Data: phantom generator, dataset adapters, image I/O, prepare-data."""
