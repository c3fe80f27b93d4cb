"""Benchmarks and the GPU check: scripts that print numbers (`python -m benchmarks.<name> --help`).

Nothing in `trainer` or `orchestrator` imports them; they import the library like any user would.
"""
