"""The DSB 2018 split of bench/dsb2018.py: decided by the ids alone, stratified by modality, about 80/20.
Runs on a made-up index, so it needs neither the data nor the folder."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("dsb2018", ROOT / "bench" / "dsb2018.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dsb2018"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _index(tmp_path, counts):
    lines = ["id\tmodality\tshape\tobjects"]
    for modality, n in counts.items():
        lines += [f"{modality}{i:04d}\t{modality}\t256x256\t{i % 7 + 1}" for i in range(n)]
    (tmp_path / "index.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_split_is_stratified_about_80_20_and_decided_by_the_ids(tmp_path):
    dsb = _module()
    entries = dsb.read_index(_index(tmp_path, {"fluo": 481, "color": 87, "bright_gray": 12}))
    parts = dsb.split(entries)
    for modality, n, held in (("fluo", 481, 96), ("color", 87, 17), ("bright_gray", 12, 2)):
        assert sum(e.modality == modality for e in parts["validation"]) == held
        assert sum(e.modality == modality for e in parts["train"]) == n - held
    assert not {e.id for e in parts["train"]} & {e.id for e in parts["validation"]}
    shuffled = dsb.split(list(reversed(entries)))  # the order of the index does not matter
    assert [e.id for e in shuffled["validation"]] == [e.id for e in parts["validation"]]
    held = {e.id for e in parts["validation"]}
    assert held != {e.id for e in entries[:len(held)]}  # not simply the first ones listed
