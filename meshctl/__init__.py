"""meshctl: the meshd admin CLI."""
