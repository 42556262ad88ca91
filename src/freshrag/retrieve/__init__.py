"""Index contract, store backends, hybrid search, ranking and evaluation."""
