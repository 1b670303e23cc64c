"""The part of torchvision that google/retiming imports (see ../README.md)."""
