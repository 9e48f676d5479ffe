"""SAFE: selective adapter freezing (Son et al., "Not All Adapters Matter", NAACL 2025).

* :mod:`runner.safe.cka` - linear and RBF CKA on token representations.
* :mod:`runner.safe.schedule` - warm-up and the cubic threshold (pure functions).
* :mod:`runner.safe.importance` - the probe batch, hooks, importance = 1 - CKA.
* :mod:`runner.safe.freezer` - freezing one adapter for real (grad, optimizer, merge).
* :mod:`runner.safe.method` - :class:`SafeMethod`, the loop hooks, DDP, reporting.
* :mod:`runner.safe.checks` - the checks across SAFE's keys, torch-free (the pre-flight's).

See docs/safe.md.
"""

__all__ = ["SafeMethod"]


def __getattr__(name: str):
    """``runner.safe.SafeMethod`` (``method._target_``) imports torch only when asked for: the pre-flight
    imports ``runner.safe.checks`` and ``runner.safe.schedule`` without it."""
    if name == "SafeMethod":
        from runner.safe.method import SafeMethod

        return SafeMethod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
