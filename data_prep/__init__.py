"""Tools that turn a raw video (or a synthetic one) into a layered_jax dataset."""
