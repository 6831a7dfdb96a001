"""Registering tiergate with engines: one small interface, one module per engine."""
