"""Glance: a private local chat assistant. Qt lives only in app.ui."""
__version__ = "0.1.0"
