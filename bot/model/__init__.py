"""Model files on disk: the base model (where it comes from, how it loads) and the adapter layout."""
