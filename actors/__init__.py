"""Long-lived actors of the mesh: catalog, coordinator host and tool runner."""
