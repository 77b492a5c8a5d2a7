"""Back ends: each enforcement target renders the validated policies into its own artifacts."""
