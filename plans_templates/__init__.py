"""JSON templates for ``nnunet-fm plans add``."""
