"""Plain nn.Modules (no Lightning import), injected into the families through class_path."""
