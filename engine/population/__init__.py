"""The population engine: the same compiled guidelines as set-based SQL over a facts store."""
