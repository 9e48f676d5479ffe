"""SAFE: selective adapter freezing (Son et al., "Not All Adapters Matter", NAACL 2025).

* :mod:`runner.safe.cka` - linear and RBF CKA on token representations.
* :mod:`runner.safe.schedule` - warm-up and the cubic threshold (pure functions).
* :mod:`runner.safe.importance` - the probe batch, hooks, importance = 1 - CKA.
* :mod:`runner.safe.freezer` - freezing one adapter for real (grad, optimizer, merge).
* :mod:`runner.safe.method` - :class:`SafeMethod`, the loop hooks, DDP, reporting.

See docs/safe.md.
"""

from runner.safe.method import SafeMethod

__all__ = ["SafeMethod"]
