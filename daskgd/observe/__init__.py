"""Observe: instrumentation of a fit, the trace it produces, and its summary."""
