"""Generator recipes: one module per generator, each registered in registry.GENERATORS by one line."""
