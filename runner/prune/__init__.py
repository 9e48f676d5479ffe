"""Attention-head pruning after fine-tuning: HIES and the criteria it is compared with.

* :mod:`.gate`: which models can be gated, and the (layers x heads) gate.
* :mod:`.scores`: HIS, attention entropy, HIES, magnitude, random.
* :mod:`.select`: the global ranking (ratio -> heads to remove).
* :mod:`.physical`: removing heads from the weights.
* :mod:`.persist`: saving and loading pruned models.
* :mod:`.pipeline`: score once, evaluate every criterion and ratio.
* :mod:`.stage`: how a job runs it (after training, or on a saved run).

See docs/hies.md for the formulas and our choices.
"""

from runner.prune.gate import HeadGate, supports_head_gating
from runner.prune.physical import prune_heads
from runner.prune.scores import attention_entropy, hies_scores, minmax
from runner.prune.select import select_heads_to_prune

__all__ = ["HeadGate", "supports_head_gating", "prune_heads", "attention_entropy", "hies_scores", "minmax",
           "select_heads_to_prune"]
