"""Examples of the standard library's documentation, run on corral with only the import changed."""
