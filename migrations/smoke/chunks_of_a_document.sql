-- budget: 50ms
-- Fetch a document's chunks in order (index chunks_document_ordinal).
SELECT id, ordinal, content, token_count
  FROM chunks
 WHERE document_id = (SELECT min(id) FROM documents)
 ORDER BY ordinal
