"""Training package: datasets, augmentation, trainer, callbacks and the `python -m training` CLI."""
