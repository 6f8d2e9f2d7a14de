"""embed layer."""
