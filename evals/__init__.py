"""Eval suites that score agents' decisions. Filled by the evals issue."""
