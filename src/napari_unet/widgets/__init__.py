"""Dock widgets: thin Qt views over :mod:`napari_unet.core`, one file per widget."""
