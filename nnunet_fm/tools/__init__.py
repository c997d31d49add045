"""Measurement and report scripts (not needed by the plugin at run time)."""
