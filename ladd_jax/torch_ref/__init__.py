"""PyTorch references of ladd_jax's computations, for parity tests and benchmarks.

Imported only by tests and by `ladd-jax bench`: nothing in the core package imports this subpackage, so the core
never needs torch (the `test` extra installs it).
"""
