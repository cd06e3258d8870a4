-- budget: 500ms
-- retrieval.search (migrations 0004, 0005) in the first document's tenant and collection, the
-- query vector taken from the data so the smoke test needs no parameters.
SELECT chunk_id, distance, path
  FROM retrieval.search((SELECT tenant FROM documents ORDER BY id LIMIT 1),
                        (SELECT collection FROM documents ORDER BY id LIMIT 1),
                        (SELECT embedding FROM chunks ORDER BY id LIMIT 1))
