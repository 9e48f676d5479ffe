"""A pruned model saved and loaded back: same shapes, same predictions, pruned heads recorded."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import ARCHS, tiny_batch, tiny_model

from runner.preflight.errors import ModelError
from runner.prune.persist import PRUNED_HEADS_FILE, load_pruned, save_pruned
from runner.prune.physical import heads_kept, prune_heads


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip(arch, tmp_path):
    pruned = torch.zeros(3, 4, dtype=torch.bool)
    pruned[0, [0, 2]] = True
    pruned[2, :] = True  # an empty layer survives the round trip too
    model = prune_heads(tiny_model(arch), pruned)
    folder = save_pruned(model, tmp_path / "pruned", extra={"criterion": "hies"})
    meta = json.loads((folder / PRUNED_HEADS_FILE).read_text())
    assert meta["pruned_heads"] == {"0": [0, 2], "2": [0, 1, 2, 3]}
    assert meta["heads_per_layer"] == [2, 4, 0] and meta["criterion"] == "hies"
    loaded = load_pruned(folder)
    assert type(loaded) is type(model)
    assert heads_kept(loaded) == [2, 4, 0]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == shapes
    batch = {k: v for k, v in tiny_batch(pad_from={1: 4}).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_loading_something_else_fails_clearly(tmp_path):
    with pytest.raises(ModelError, match="pruned_heads.json"):
        load_pruned(tmp_path)
    model = prune_heads(tiny_model(), {1: [0]})
    folder = save_pruned(model, tmp_path / "m")
    (folder / PRUNED_HEADS_FILE).write_text(json.dumps({"format": 1, "pruned_heads": {"1": [0, 1]}}))
    with pytest.raises(ModelError, match="do not fit the pruned architecture"):
        load_pruned(folder)
