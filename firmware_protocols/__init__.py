"""firmware_protocols."""
