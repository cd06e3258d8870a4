-- recall@10 of the ANN path against the exact answer, over 50 query vectors taken from the data,
-- for a large tenant, a small tenant and no filter.
CREATE TEMP TABLE queries AS
    SELECT id AS qid, embedding, 'big-' || (id % 4) AS big, 'small-' || (id % 50) AS small
      FROM chunks TABLESAMPLE BERNOULLI (5) LIMIT 50;
CREATE TEMP TABLE exact AS
    SELECT 'big' AS kind, q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks WHERE tenant = q.big ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'small', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks WHERE tenant = q.small ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'unfiltered', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks ORDER BY embedding <=> q.embedding LIMIT 10) c;
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = 200;
SET LOCAL jit = off;
SET LOCAL hnsw.iterative_scan = relaxed_order;
CREATE TEMP TABLE ann AS
    SELECT 'big' AS kind, q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks WHERE tenant = q.big
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'small', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks WHERE tenant = q.small
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'unfiltered', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c;
COMMIT;
SELECT e.kind, round(count(a.id)::numeric / count(*), 3) AS recall_at_10
  FROM exact e LEFT JOIN ann a USING (kind, qid, id)
 GROUP BY e.kind ORDER BY e.kind;
