"""Spider extensions: ``checkpoint`` plans and closes runs; the others are optional concerns."""
