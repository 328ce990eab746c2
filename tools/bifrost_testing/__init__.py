"""Test fixtures, topologies and the lab: used by tests/, benchmarks/ and `invoke lab`.

Nothing under tools/bifrost imports this package (tests/unit/test_testing_package.py
checks it): an operator's install does not need a reference game server or a lab.
"""
