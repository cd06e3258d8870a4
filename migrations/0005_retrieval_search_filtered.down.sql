-- Back to the first version of retrieval.search (0004): the halfvec graph walk, 80 candidates.
CREATE OR REPLACE FUNCTION retrieval.search(
    tenant text,
    collection text,
    query_embedding vector(3072),
    filter jsonb DEFAULT NULL,
    k integer DEFAULT 10,
    exact_below integer DEFAULT 1000,
    candidates integer DEFAULT 80
) RETURNS TABLE (chunk_id bigint, document_id bigint, distance double precision, path text)
LANGUAGE plpgsql STABLE
SET enable_seqscan = on
SET enable_sort = on
SET jit = off
SET hnsw.ef_search = 200
SET hnsw.iterative_scan = relaxed_order
AS $search$
DECLARE
    passing bigint;
BEGIN
    SELECT count(*) INTO passing FROM (
        SELECT 1 FROM chunks c
         WHERE c.tenant = search.tenant AND c.collection = search.collection
           AND c.embedding IS NOT NULL
           AND (search.filter IS NULL
                OR c.document_id IN (SELECT d.id FROM documents d WHERE d.metadata @> search.filter))
         LIMIT search.exact_below + 1) s;
    IF passing <= search.exact_below THEN
        RETURN QUERY
            SELECT c.id, c.document_id, (c.embedding <=> search.query_embedding)::double precision, 'exact'
              FROM chunks c
             WHERE c.tenant = search.tenant AND c.collection = search.collection
               AND c.embedding IS NOT NULL
               AND (search.filter IS NULL
                    OR c.document_id IN (SELECT d.id FROM documents d WHERE d.metadata @> search.filter))
             ORDER BY 3
             LIMIT search.k;
        RETURN;
    END IF;
    -- The graph walk: only an index scan orders by the halfvec distance here.
    PERFORM set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true);
    RETURN QUERY
        WITH nearest AS (
            SELECT c.id, c.document_id, c.embedding FROM chunks c
             WHERE c.tenant = search.tenant AND c.collection = search.collection
               AND (search.filter IS NULL
                    OR c.document_id IN (SELECT d.id FROM documents d WHERE d.metadata @> search.filter))
             ORDER BY c.embedding::halfvec(3072) <=> search.query_embedding::halfvec(3072)
             LIMIT greatest(search.candidates, search.k))
        SELECT n.id, n.document_id, (n.embedding <=> search.query_embedding)::double precision, 'ann'
          FROM nearest n
         ORDER BY 3
         LIMIT search.k;
END
$search$;
