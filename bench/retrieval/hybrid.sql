-- Hybrid full-text + vector search in a large tenant, fused by reciprocal rank.
\set qid random(1, :n)
\set tenant random(0, 3)
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = 200;
SET LOCAL jit = off;
SET LOCAL hnsw.iterative_scan = relaxed_order;
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid),
lexical AS (
    SELECT id, row_number() OVER (ORDER BY ts_rank(content_tsv, tq) DESC) AS rank
      FROM chunks, websearch_to_tsquery('english', 'index tuning') AS tq
     WHERE tenant = 'big-' || :tenant AND content_tsv @@ tq
     ORDER BY ts_rank(content_tsv, tq) DESC LIMIT 80),
semantic AS (
    SELECT id, row_number() OVER (ORDER BY embedding::halfvec(3072) <=> (SELECT embedding::halfvec(3072) FROM q)) AS rank
      FROM chunks
     WHERE tenant = 'big-' || :tenant
     ORDER BY embedding::halfvec(3072) <=> (SELECT embedding::halfvec(3072) FROM q) LIMIT 80)
SELECT id, sum(1.0 / (60 + rank)) AS score
  FROM (SELECT * FROM lexical UNION ALL SELECT * FROM semantic) both_lists
 GROUP BY id ORDER BY score DESC LIMIT 10;
COMMIT;
