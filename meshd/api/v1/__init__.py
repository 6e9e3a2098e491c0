"""Generated from proto/meshd/v1 by scripts/gen_protos.py; do not edit."""
