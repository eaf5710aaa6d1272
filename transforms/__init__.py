"""Pipeline stages: each a plain function with a thin Beam wrapper."""
