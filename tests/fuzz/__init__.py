"""Property-based tests and a fuzz harness for the parsers that face hostile input.

Checked here, and kept checked: "no crash, no 500, no escape" for the config loader, route templates
and the matcher, upstream-path building, JWT/Authorization parsing, proxy header rewriting and the
transformation rules. ``pytest tests/fuzz`` runs a bounded, deterministic pass (and replays the
seed corpus in ``corpus/``); ``python -m tests.fuzz.harness --seconds N`` fuzzes for longer.
"""
