"""Attention-head pruning after fine-tuning: HIES and the criteria it is compared with.

* :mod:`.gate`: which models can be gated, and the (layers x heads) gate.
* :mod:`.scores`: HIS, attention entropy, HIES, magnitude, random.
* :mod:`.select`: the global ranking (ratio -> heads to remove).
* :mod:`.physical`: removing heads from the weights.
* :mod:`.persist`: saving and loading pruned models.
* :mod:`.pipeline`: score once, evaluate every criterion and ratio.
* :mod:`.stage`: how a job runs it (after training, or on a saved run).

See docs/hies.md for the formulas and our choices. The package imports
nothing itself, so that validating ``cfg.prune`` (``.settings``) does not load torch.
"""
