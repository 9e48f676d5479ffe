"""What runs before anything heavy is imported: a command line turned into a checked job.

* :mod:`runner.preflight.schema`: every setting's type, default, range and meaning, declared once;
* :mod:`runner.preflight.config`: composing ``conf/`` into a job's config, the runner's interpolations;
* :mod:`runner.preflight.validate`: the one validation of a composed job (the schema, then the checks
  across keys, each method's own);
* :mod:`runner.preflight.command_line`: the checks ``python -m runner`` makes before Hydra makes a run
  dir (unknown keys with "did you mean", an unwritable output root);
* :mod:`runner.preflight.errors`: the errors a user can act on, one line and an exit code each.

Nothing in this package imports torch, transformers or any other heavy library, so bad input fails in
about a second (tests/test_preflight.py proves it module by module and for a whole validation).
"""
