"""Change events, chunking, the Bytewax flow and the loader."""
