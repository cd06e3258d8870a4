-- An exact scan of a large tenant: what the ANN path saves (and the fallback without an index).
\set qid random(1, :n)
\set tenant random(0, 3)
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid)
SELECT id, document_id, embedding <=> (SELECT embedding FROM q) AS distance
  FROM chunks
 WHERE tenant = 'big-' || :tenant AND collection = 'docs'
 ORDER BY distance LIMIT 10;
