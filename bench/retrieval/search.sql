-- retrieval.search in a large tenant with the metadata filter :filter (a
-- quoted jsonb literal, or NULL); the query vector is a bind parameter, as an application sends it.
\set qid random(1, :n)
\set tenant random(0, 3)
SELECT embedding AS q FROM chunks WHERE id = :qid \gset
SELECT chunk_id, distance, path FROM retrieval.search('big-' || :tenant, 'docs', ':q', :filter);
