-- budget: 500ms
-- Top 10 by similarity within a tenant and collection (index chunks_embedding_hnsw), the query
-- vector taken from the data so the smoke test needs no parameters.
SELECT id, document_id
  FROM chunks
 WHERE (tenant, collection) = (SELECT tenant, collection FROM documents ORDER BY id LIMIT 1)
 ORDER BY embedding::halfvec(3072) <=> (SELECT embedding::halfvec(3072) FROM chunks ORDER BY id LIMIT 1)
 LIMIT 10
