"""Front end: YAML with positions → validated (CRD schema + semantics) → frozen, normalised model."""
