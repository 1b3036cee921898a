"""Hydra discovers this plugin through the ``hydra_plugins`` namespace package."""
