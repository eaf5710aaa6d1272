"""Pipeline assembly, options and the kinetics-prep command line."""
