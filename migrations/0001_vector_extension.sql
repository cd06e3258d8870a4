-- pgvector: the vector and halfvec types and the HNSW index method (0.7+ for halfvec, 0.8 for
-- iterative index scans).
CREATE EXTENSION IF NOT EXISTS vector;
