"""scale/index layer."""
