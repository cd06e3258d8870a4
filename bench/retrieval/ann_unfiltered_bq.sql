-- The ANN path without a filter on the binary-quantized index, :cand candidates re-ranked.
\set qid random(1, :n)
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = :cand;
SET LOCAL jit = off;
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid),
candidates AS (
    SELECT c.id, c.document_id, c.embedding FROM chunks c
     ORDER BY binary_quantize(c.embedding)::bit(3072) <~> (SELECT binary_quantize(embedding) FROM q)
     LIMIT :cand)
SELECT id, document_id, embedding <=> (SELECT embedding FROM q) AS distance
  FROM candidates ORDER BY distance LIMIT 10;
COMMIT;
