"""xtalpilot controller."""
