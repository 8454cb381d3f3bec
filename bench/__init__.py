"""Benchmarks: `python -m bench` lists them, `python -m bench NAME` runs one.

Each benchmark is a module ``bench/NAME.py`` with a one-line docstring and a
``main(argv: list[str]) -> float`` that prints its figures and returns the ratio
ours / baseline measured in the same run (higher is better).
"""
