"""Pieces shared by every stage: settings and the embedder."""
