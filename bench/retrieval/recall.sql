-- recall@10 against the exact answer over :queries query vectors taken from the data: the
-- halfvec HNSW path and the binary-quantized path (:cand candidates) for a large tenant, a small
-- tenant and no filter, and retrieval.search for each metadata filter of a large tenant.
CREATE TEMP TABLE queries AS
    SELECT id AS qid, embedding, 'big-' || (id % 4) AS big, 'small-' || (id % 50) AS small
      FROM chunks TABLESAMPLE BERNOULLI (5) LIMIT :queries;
CREATE TEMP TABLE filters (name text, filter jsonb);
INSERT INTO filters VALUES ('none', NULL), ('public', '{"public": true}'), ('year', '{"year": 2015}'),
    ('lang', '{"lang": "de"}'), ('lang+year', '{"lang": "de", "year": 2015}');
CREATE TEMP TABLE exact AS
    SELECT 'big' AS kind, q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks WHERE tenant = q.big ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'small', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks WHERE tenant = q.small ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'unfiltered', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'search big ' || f.name, q.qid, c.id FROM queries q CROSS JOIN filters f CROSS JOIN LATERAL (
        SELECT id FROM chunks
         WHERE tenant = q.big
           AND (f.filter IS NULL OR document_id IN (SELECT id FROM documents WHERE metadata @> f.filter))
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'search small', q.qid, c.id FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM chunks WHERE tenant = q.small ORDER BY embedding <=> q.embedding LIMIT 10) c;
CREATE TEMP TABLE found AS
    SELECT 'retrieval.search' AS method, 'search big ' || f.name AS kind, q.qid, s.chunk_id AS id, s.path
      FROM queries q CROSS JOIN filters f
     CROSS JOIN LATERAL retrieval.search(q.big, 'docs', q.embedding, f.filter) s
    UNION ALL
    SELECT 'retrieval.search', 'search small', q.qid, s.chunk_id, s.path
      FROM queries q CROSS JOIN LATERAL retrieval.search(q.small, 'docs', q.embedding) s;
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_sort = off;
SET LOCAL hnsw.ef_search = 200;
SET LOCAL jit = off;
SET LOCAL hnsw.iterative_scan = relaxed_order;
INSERT INTO found
    SELECT 'halfvec HNSW, 80 re-ranked', 'big', q.qid, c.id, NULL FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks WHERE tenant = q.big
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'halfvec HNSW, 80 re-ranked', 'small', q.qid, c.id, NULL FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks WHERE tenant = q.small
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'halfvec HNSW, 80 re-ranked', 'unfiltered', q.qid, c.id, NULL FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks
                         ORDER BY embedding::halfvec(3072) <=> q.embedding::halfvec(3072) LIMIT 80) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c;
SET LOCAL hnsw.ef_search = :cand;
INSERT INTO found
    SELECT 'binary HNSW, ' || :cand || ' re-ranked', 'big', q.qid, c.id, NULL FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks WHERE tenant = q.big
                         ORDER BY binary_quantize(embedding)::bit(3072) <~> binary_quantize(q.embedding)
                         LIMIT :cand) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c
    UNION ALL
    SELECT 'binary HNSW, ' || :cand || ' re-ranked', 'unfiltered', q.qid, c.id, NULL FROM queries q CROSS JOIN LATERAL (
        SELECT id FROM (SELECT id, embedding FROM chunks
                         ORDER BY binary_quantize(embedding)::bit(3072) <~> binary_quantize(q.embedding)
                         LIMIT :cand) cand
         ORDER BY embedding <=> q.embedding LIMIT 10) c;
COMMIT;
SELECT m.method, m.kind, round(count(f.id)::numeric / count(*), 3) AS recall_at_10,
       (SELECT string_agg(DISTINCT p.path, '+') FROM found p WHERE p.kind = m.kind AND p.method = m.method) AS paths
  FROM (SELECT DISTINCT method, kind FROM found) m
  JOIN exact e USING (kind)
  LEFT JOIN found f ON f.method = m.method AND f.kind = e.kind AND f.qid = e.qid AND f.id = e.id
 GROUP BY m.method, m.kind ORDER BY m.kind, m.method;
