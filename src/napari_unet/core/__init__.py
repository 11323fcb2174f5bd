"""The engine of napari-unet: numpy and torch only, never Qt, magicgui or napari.

Submodules are imported explicitly by their users; this package file stays empty so that importing
``napari_unet.core.errors`` (say, from a widget) does not pull in torch.
"""
