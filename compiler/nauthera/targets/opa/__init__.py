"""The OPA target: Rego modules and data, packaged as a reproducible (optionally signed) bundle."""
