"""tiergate: an OCI hook and runtime shim that hardens each container by a security tier."""
