"""LightningModules, one per training phase."""
