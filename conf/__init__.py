"""xtalpilot conf."""
