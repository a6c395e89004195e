"""Benchmark suites, one module each; each registers itself with harness.suite.SUITES."""
