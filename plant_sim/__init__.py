"""xtalpilot plant_sim."""
