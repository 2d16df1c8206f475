"""otdiff."""
