"""Where to look next in the Segment dock: the uncertainty layer and the least certain objects, a click away."""
from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.inference import segment
from napari_unet.core.models import load_model
from napari_unet.core.uncertainty import entropy_map, object_doubts
from napari_unet.synthetic import generate_nuclei


@pytest.fixture
def nuclei_widget(segment_widget):
    assert segment_widget.select_model("nuclei")  # real objects, and real doubts about some of them
    segment_widget.doubts.check.setChecked(True)
    return segment_widget


def test_uncertainty_layer_and_the_least_certain_objects_in_view(qtbot, viewer, nuclei_widget, run_segment):
    image, _ = generate_nuclei((128, 128), "dense", seed=7)
    viewer.add_image(image, name="cells")
    assert run_segment(nuclei_widget) == "done"
    expected = segment(image, load_model("nuclei"), axes="YX")
    entropy = entropy_map(expected.probabilities)
    layer = viewer.layers["cells uncertainty"]
    np.testing.assert_allclose(layer.data, entropy, atol=1e-6)
    assert viewer.layers.index(layer) < viewer.layers.index("cells labels"), "under the labels"
    listed = [nuclei_widget.doubts.list.item(i).data(0x0100) for i in range(nuclei_widget.doubts.list.count())]
    ranked = object_doubts(expected.labels, entropy)
    assert [d.label for d in listed] == [d.label for d in ranked[:5]]
    assert "cells P(interior)" not in viewer.layers, "probability layers only when asked for"

    nuclei_widget.doubts.list.itemClicked.emit(nuclei_widget.doubts.list.item(2))
    labels = viewer.layers["cells labels"]
    assert labels.selected_label == listed[2].label
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    np.testing.assert_allclose(camera.center[-2:], listed[2].centre, atol=1e-6)


def test_the_list_follows_the_plane_shown_of_a_stack(qtbot, viewer, nuclei_widget, run_segment):
    stack, _ = generate_nuclei((3, 96, 96), "dense", seed=8)
    viewer.add_image(stack, name="stack")
    nuclei_widget.scope_picker.setCurrentIndex(nuclei_widget.scope_picker.findData("slice"))
    viewer.dims.set_point(0, 1)
    assert run_segment(nuclei_widget) == "done"
    labels = viewer.layers["stack labels"]
    panel = nuclei_widget.doubts
    first = panel.list.item(0).data(0x0100)
    assert first.centre[0] == 1 and labels.data[1][tuple(round(c) for c in first.centre[1:])] == first.label
    viewer.dims.set_point(0, 0)  # a plane the run did not cover: nothing of it to list
    panel.refresh()
    assert panel.list.count() == 0 and "No object in view" in panel.title.text()
