"""Browse a shard set by text with clip-retrieval: its inference, its index, its back end and
front end (``python -m explore``)."""
