"""The configuration model: pydantic sections, defaults from the spec, loading, policies.

Owns ``VibeConfig`` and its sections, TOML/YAML loading with field-path errors, and
the one way every policy is loaded.  May import ``scheduler.core`` and ``policies``.
"""
