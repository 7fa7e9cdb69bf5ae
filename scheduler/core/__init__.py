"""The vocabulary every part speaks: errors, clocks, events, usage, the provider protocol.

Owns the exception tree, wall clocks, the event bus and hooks, usage records and
cost, the provider protocol and name resolution.  Imports nothing else from
``scheduler`` (layer 0).
"""
