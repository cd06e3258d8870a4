-- The exact path in a small tenant (btree, then an exact distance sort).
\set qid random(1, :n)
\set tenant random(0, 49)
WITH q AS (SELECT embedding FROM chunks WHERE id = :qid)
SELECT id, document_id, embedding <=> (SELECT embedding FROM q) AS distance
  FROM chunks
 WHERE tenant = 'small-' || :tenant AND collection = 'docs'
 ORDER BY distance LIMIT 10;
