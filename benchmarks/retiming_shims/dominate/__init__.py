"""A minimal dominate: nested tags as context managers, rendered as HTML (see ../README.md)."""
from dominate.tags import document

__all__ = ['document']
