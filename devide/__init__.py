"""devide: knowledge-augmented vision-language pretraining for chest radiographs (after DeViDe)."""

__version__ = "0.1.0"
