"""Stacks in the docks with a 3D model: a few painted planes fine-tune it, and Segment gives 3D objects."""
from __future__ import annotations

import numpy as np

from napari_unet.core.versions import read_annotations


def test_finetune_a_3d_model_on_a_few_painted_planes_of_a_stack(qtbot, viewer, finetune_widget, make_tiny_model):
    from napari_unet.synthetic import generate_nuclei

    make_tiny_model("tiny3d", spatial_dims=3)
    stack, labels = generate_nuclei((8, 32, 32), "dense", seed=4)
    painted = np.zeros_like(labels)
    painted[[1, 6]] = labels[[1, 6]]  # the user painted two planes of the stack
    viewer.add_image(stack, name="stack")
    viewer.layers.selection.active = viewer.add_labels(painted, name="stack corrected")
    finetune_widget.add_button.click()
    assert finetune_widget.model_picker.select("tiny3d")
    finetune_widget.steps_spin.setValue(2)
    with qtbot.waitSignal(finetune_widget.run_finished, timeout=60_000) as blocker:
        finetune_widget.run_button.click()
    assert blocker.args == ["done"], finetune_widget.status.text()
    assert finetune_widget.saved_path.name == "tiny3d-v2"
    (_, annotated, axes), = read_annotations(finetune_widget.saved_path)
    assert axes == "ZYX" and annotated[[1, 6]].all() and not annotated[[0, 2, 3, 4, 5, 7]].any()
