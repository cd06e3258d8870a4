-- retrieval.search, second version, from the 1,000,000-chunk measurements (bench/RESULTS.md),
-- where the first version spent its time outside the distance work:
--   * the count that picks the path starts from the documents that pass the filter (their GIN
--     index), so a selective filter costs its own size, not a scan of the whole tenant (0.5 %
--     of a 225,000-chunk tenant: 289 ms p50 before);
--   * the metadata filter is a correlated EXISTS on the document's primary key, checked only
--     for the chunks the walk reaches, instead of hashing every matching document of every
--     tenant first (a 50 % filter: 162 ms p50 before);
--   * the query vector is copied once into a local variable: a value read from a table arrives
--     as a TOAST pointer, and every distance would fetch it again;
--   * every call is planned with its own values (plan_cache_mode), so a NULL filter and a
--     selective one each get their own plan;
--   * hnsw.max_scan_tuples is raised so that a filter passing ~1 % of the table still yields
--     its candidates.
-- The walk stays on the halfvec index (0003): a binary-quantized index was measured beside it
-- and needed ~800 candidates for the recall halfvec reaches with 80. exact_below moves from
-- 1,000 to 3,000: at 1,000,000 chunks an exact scan of 1,100 filtered chunks took 35-110 ms
-- where the walk that must pass 99.9 % of what it reaches took 450 ms, and the walk won again
-- only at ~11,000 (127 ms against 300 ms). The signature is unchanged.
CREATE OR REPLACE FUNCTION retrieval.search(
    tenant text,
    collection text,
    query_embedding vector(3072),
    filter jsonb DEFAULT NULL,
    k integer DEFAULT 10,
    exact_below integer DEFAULT 3000,
    candidates integer DEFAULT 80
) RETURNS TABLE (chunk_id bigint, document_id bigint, distance double precision, path text)
LANGUAGE plpgsql STABLE
SET enable_seqscan = on
SET enable_sort = on
SET jit = off
SET plan_cache_mode = force_custom_plan
SET hnsw.ef_search = 200
SET hnsw.iterative_scan = relaxed_order
SET hnsw.max_scan_tuples = 50000
AS $search$
DECLARE
    q vector(3072) := query_embedding;
    passing bigint;
BEGIN
    IF search.filter IS NULL THEN
        SELECT count(*) INTO passing FROM (
            SELECT 1 FROM chunks c
             WHERE c.tenant = search.tenant AND c.collection = search.collection
               AND c.embedding IS NOT NULL
             LIMIT search.exact_below + 1) s;
    ELSE
        SELECT count(*) INTO passing FROM (
            SELECT 1 FROM documents d JOIN chunks c ON c.document_id = d.id
             WHERE d.tenant = search.tenant AND d.collection = search.collection
               AND d.metadata @> search.filter
               AND c.tenant = search.tenant AND c.collection = search.collection
               AND c.embedding IS NOT NULL
             LIMIT search.exact_below + 1) s;
    END IF;
    IF passing <= search.exact_below THEN
        RETURN QUERY
            SELECT c.id, c.document_id, (c.embedding <=> q)::double precision, 'exact'
              FROM chunks c
             WHERE c.tenant = search.tenant AND c.collection = search.collection
               AND c.embedding IS NOT NULL
               AND (search.filter IS NULL OR EXISTS (
                    SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.metadata @> search.filter))
             ORDER BY 3
             LIMIT search.k;
        RETURN;
    END IF;
    -- The graph walk: only the index produces the order, and the filter is checked row by row
    -- as the walk reaches each chunk.
    PERFORM set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true),
            set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
            set_config('hnsw.ef_search', least(greatest(search.candidates, 200)
                                               * CASE WHEN search.filter IS NULL THEN 1 ELSE 2 END, 1000)::text, true);
    RETURN QUERY
        WITH nearest AS (
            SELECT c.id, c.document_id, c.embedding FROM chunks c
             WHERE c.tenant = search.tenant AND c.collection = search.collection
               AND (search.filter IS NULL OR EXISTS (
                    SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.metadata @> search.filter))
             ORDER BY c.embedding::halfvec(3072) <=> q::halfvec(3072)
             LIMIT greatest(search.candidates, search.k))
        SELECT n.id, n.document_id, (n.embedding <=> q)::double precision, 'ann'
          FROM nearest n
         ORDER BY 3
         LIMIT search.k;
END
$search$;
