"""loraf API: pydantic models, CRD generation, trainer config and exit codes (no torch)."""
