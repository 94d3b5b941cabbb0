"""xtalpilot models."""
