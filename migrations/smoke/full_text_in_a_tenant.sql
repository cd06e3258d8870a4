-- budget: 200ms
-- Full-text search within a tenant (index chunks_content_tsv).
SELECT id, document_id, ts_rank(content_tsv, q) AS rank
  FROM chunks, websearch_to_tsquery('english', 'database index') AS q
 WHERE content_tsv @@ q AND tenant = (SELECT tenant FROM documents ORDER BY id LIMIT 1)
 ORDER BY rank DESC
 LIMIT 10
