-- The ANN path in a large tenant on the binary-quantized index (migration 0005): :cand
-- candidates by Hamming distance (ef_search as large), re-ranked by the exact distance.
\set qid random(1, :n)
\set tenant random(0, 3)
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = :cand;
SET LOCAL jit = off;
SET LOCAL hnsw.iterative_scan = relaxed_order;
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid),
candidates AS (
    SELECT c.id, c.document_id, c.embedding FROM chunks c
     WHERE c.tenant = 'big-' || :tenant AND c.collection = 'docs'
     ORDER BY binary_quantize(c.embedding)::bit(3072) <~> (SELECT binary_quantize(embedding) FROM q)
     LIMIT :cand)
SELECT id, document_id, embedding <=> (SELECT embedding FROM q) AS distance
  FROM candidates ORDER BY distance LIMIT 10;
COMMIT;
