"""Trainer hooks: small mixins shared by every plugin trainer."""
