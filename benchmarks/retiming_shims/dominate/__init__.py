"""A minimal dominate: nested tags as context managers, rendered as HTML (see ../README.md)."""
from dominate.tags import document  # noqa: F401
