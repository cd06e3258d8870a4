-- pgsidecar:no-transaction
-- pgsidecar:statement-timeout 4h
-- Similarity search above pgvector's 2,000-dimension limit for `vector` indexes: an HNSW index
-- on the half-precision expression (halfvec indexes up to 4,000 dimensions). Queries must order
-- by the same expression, `embedding::halfvec(3072) <=> $1::halfvec(3072)`, and re-rank the
-- candidates by the exact `vector` distance. Built CONCURRENTLY: writes go on during the build.
CREATE INDEX CONCURRENTLY chunks_embedding_hnsw ON chunks
    USING hnsw ((embedding::halfvec(3072)) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64);
