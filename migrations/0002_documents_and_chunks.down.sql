-- pgsidecar:blocking reason="removes the retrieval schema; deploy code that no longer uses documents and chunks first"
DROP TABLE chunks;
DROP TABLE documents;
