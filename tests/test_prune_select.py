"""The global ranking and the checks on prune settings."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from runner.preflight.errors import ConfigError
from runner.preflight.schema import declared_defaults
from runner.prune.select import dict_to_mask, mask_to_dict, num_heads_to_prune, select_heads_to_prune
from runner.prune.settings import parse


def test_ranking_prunes_the_lowest_scores_over_all_layers():
    scores = torch.tensor([
        [0.9, 0.1, 0.8, 0.7],
        [0.05, 0.02, 0.6, 0.5],
        [0.95, 0.3, 0.4, 0.99],
    ])
    pruned = select_heads_to_prune(scores, 0.4, min_heads_per_layer=0)  # round(4.8) = 5 heads
    expected = {0: [1], 1: [0, 1], 2: [1, 2]}
    assert mask_to_dict(pruned) == expected
    kept = scores[~pruned]
    assert scores[pruned].max() < kept.min()  # every pruned head scores below every kept one
    assert torch.equal(dict_to_mask(expected, 3, 4), pruned)
    # a whole layer can go when its heads are the lowest ...
    scores2 = scores.clone()
    scores2[1] = torch.tensor([0.01, 0.02, 0.03, 0.04])
    assert mask_to_dict(select_heads_to_prune(scores2, 0.34)) == {1: [0, 1, 2, 3]}  # round(4.08) = 4
    # ... unless min_heads_per_layer keeps some: the next-lowest heads elsewhere go instead
    assert mask_to_dict(select_heads_to_prune(scores2, 0.34, min_heads_per_layer=1)) == {0: [1], 1: [0, 1, 2]}


def test_number_of_heads_and_bad_ratios():
    assert [num_heads_to_prune(r, 72) for r in (0.0, 0.1, 0.3, 0.5, 0.7)] == [0, 7, 22, 36, 50]
    assert select_heads_to_prune(torch.rand(6, 12), 0.0).sum() == 0
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"must lie in \[0, 1\)"):
            select_heads_to_prune(torch.rand(2, 2), bad)
    with pytest.raises(ConfigError, match="min_heads_per_layer"):
        select_heads_to_prune(torch.rand(3, 4), 0.9, min_heads_per_layer=2)


def _prune_cfg(**kw):
    base = OmegaConf.create(declared_defaults()["prune/schema_hies"])  # prune=hies as composed
    base.seed = 0
    return OmegaConf.merge(base, kw)


def test_settings_parse_and_defaults():
    s = parse(_prune_cfg(ratios=[0.5, 0.1, 0.7], compare=["his", "random", "hies"]))
    assert s.criterion == "hies" and s.ratio == 0.3
    assert s.ratios == (0.1, 0.3, 0.5, 0.7)  # sorted, primary ratio included
    assert s.compare == ("hies", "his", "random")  # primary first, no duplicates
    assert s.alpha == 0.5 and not s.alpha_auto and s.calib_samples == 32 and s.normalize_layers
    assert parse(_prune_cfg(alpha="auto")).alpha_auto
    # alpha in [0, 1) as in the paper: the default grid is 0.0 ... 0.9 (alpha = 1 is HIS, a criterion of its own)
    assert s.alpha_grid == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9) and 1.0 not in s.alpha_grid
    assert s.alpha_split == "train_holdout"  # today's protocol by default
    assert parse(_prune_cfg(alpha_split="dev_half", alpha=0.3)).alpha_split == "dev_half"


ALPHA_IS_HIS = "; alpha = 1 is plain HIS, a criterion of its own: use prune.name=his or add his to prune.compare"


@pytest.mark.parametrize("override, message", [
    ({"ratio": 1.0}, r"prune.ratio \(the fraction of heads removed\) must be in \[0, 1\), got 1.0"),
    ({"ratio": -0.2}, r"prune.ratio \(the fraction of heads removed\) must be in \[0, 1\), got -0.2"),
    ({"ratios": [0.1, 1.2]}, r"every prune.ratios value must be in \[0, 1\), got 1.2"),
    ({"alpha": 1.5}, r"prune.alpha \(weight of HIS against entropy\) must be a number in \[0, 1\) or auto, got 1.5$"),
    ({"alpha": -0.1}, r"prune.alpha .* must be a number in \[0, 1\) or auto, got -0.1$"),
    ({"alpha": "often"}, r"prune.alpha .* must be a number in \[0, 1\) or auto, got 'often'$"),
    ({"alpha": 1.0}, r"^prune.alpha \(weight of HIS against entropy\) must be a number in \[0, 1\) or auto, got 1.0"
                     + re.escape(ALPHA_IS_HIS) + "$"),
    ({"alpha": 1}, r"must be a number in \[0, 1\) or auto, got 1" + re.escape(ALPHA_IS_HIS) + "$"),
    ({"alpha_grid": [0.5, 2.0]}, r"every prune.alpha_grid value must be in \[0, 1\), got 2.0$"),
    ({"alpha_grid": [0.0, 0.9, 1.0]}, r"^every prune.alpha_grid value must be in \[0, 1\), got 1.0" + re.escape(ALPHA_IS_HIS) + "$"),
    ({"alpha_split": "test_set"}, "prune.alpha_split must be one of train_holdout, dev_half, got 'test_set'"),
    ({"name": "lottery"}, "prune.name must be one of none, hies, his, entropy, magnitude, random, got 'lottery'"),
    ({"compare": ["his", "oracle"]}, "every prune.compare value must be one of hies, his, entropy, random, magnitude, none, got 'oracle'"),
    ({"calib_samples": 0}, "prune.calib_samples must be a positive integer, got 0"),
    ({"min_heads_per_layer": -1}, "prune.min_heads_per_layer must be 0 or a positive integer, got -1"),
    ({"latency": "sometimes"}, "prune.latency must be one of"),
])
def test_bad_settings_stop_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message) as exc:
        parse(_prune_cfg(**override))
    assert "\n" not in str(exc.value)  # one line
