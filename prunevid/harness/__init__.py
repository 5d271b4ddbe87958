"""The kit's harness: the programs around the library (``python -m prunevid ...``): the CLI, the
benchmark runner and its run folders, reports and the course, the demo study, latency, FLOPs and
matched budgets. The library (``prunevid.apply`` and what it stands on) never imports from here."""
