-- The binary-quantized candidate, compared against the halfvec index (migration 0003) by
-- run.sh; not shipped as a migration, because at 1,000,000 chunks it lost on recall (see
-- bench/RESULTS.md). One bit per dimension compared by Hamming distance: an entry is 384 bytes
-- instead of halfvec's 6 KB, so the index is a twelfth of the size and builds four times
-- faster. Queries order by `binary_quantize(embedding)::bit(3072) <~> binary_quantize($1)` and
-- re-rank their candidates by the exact distance (ann_bq.sql, ann_unfiltered_bq.sql).
CREATE INDEX CONCURRENTLY chunks_embedding_binary_hnsw ON chunks
    USING hnsw ((binary_quantize(embedding)::bit(3072)) bit_hamming_ops) WITH (m = 16, ef_construction = 64);
