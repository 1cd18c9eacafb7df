"""Small helpers shared by the three stages: config loading and storage I/O."""
