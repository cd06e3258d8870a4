-- A document's chunks in order.
\set doc random(1, :n / 4)
SELECT id, ordinal, content FROM chunks WHERE document_id = :doc ORDER BY ordinal;
