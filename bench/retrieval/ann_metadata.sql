-- The ANN path in a large tenant with a metadata filter (German documents: 5 %).
\set qid random(1, :n)
\set tenant random(0, 3)
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = 200;
SET LOCAL jit = off;
SET LOCAL hnsw.iterative_scan = relaxed_order;
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid),
candidates AS (
    SELECT c.id, c.document_id, c.embedding FROM chunks c
     WHERE c.tenant = 'big-' || :tenant AND c.collection = 'docs'
       AND c.document_id IN (SELECT id FROM documents WHERE metadata @> '{"lang": "de"}')
     ORDER BY c.embedding::halfvec(3072) <=> (SELECT embedding::halfvec(3072) FROM q)
     LIMIT 80)
SELECT id, document_id, embedding <=> (SELECT embedding FROM q) AS distance
  FROM candidates ORDER BY distance LIMIT 10;
COMMIT;
