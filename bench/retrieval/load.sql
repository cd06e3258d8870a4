-- Synthetic chunks for the retrieval benchmark: :n chunks of 3072-dimension unit vectors drawn
-- around 300 cluster centres (a centre plus two of 1,000 noise vectors picked at random, added in
-- pgvector's C code, so loading is quick and duplicates are negligible); 4 large tenants hold 90 %
-- of the rows, 50 small ones the rest. Document metadata is independent of the tenant, so a filter
-- has the same selectivity inside every tenant: `lang` "de" 5 %, each `year` 10 %, `public` 50 %
-- (so {"lang": "de", "year": 2015} keeps 0.5 % of a tenant).
CREATE TEMP TABLE centres AS
    SELECT c, (array_agg(random() - 0.5))::vector AS v
      FROM generate_series(1, 300) c, generate_series(1, 3072) GROUP BY c;
CREATE TEMP TABLE noise AS
    SELECT k, (array_agg((random() - 0.5) * 0.15))::vector AS v
      FROM generate_series(1, 1000) k, generate_series(1, 3072) GROUP BY k;
INSERT INTO documents (tenant, collection, source_uri, title, metadata, content_hash)
    SELECT CASE WHEN g % 10 = 0 THEN 'small-' || (g / 10) % 50 ELSE 'big-' || g % 4 END,
           'docs', 'https://example.com/' || g, 'doc ' || g,
           jsonb_build_object('lang', CASE WHEN (g / 4) % 20 = 0 THEN 'de' ELSE 'en' END,
                              'year', 2015 + (g / 80) % 10, 'public', (g / 4) % 2 = 1),
           md5(g::text)
      FROM generate_series(1, :n / 4) g;
INSERT INTO chunks (document_id, tenant, collection, ordinal, content, token_count, embedding, embedding_model)
    SELECT r.id, r.tenant, r.collection, r.o, 'chunk ' || r.o || ' of document ' || r.id || ' about database index tuning',
           12, l2_normalize(ce.v + n1.v + n2.v), 'text-embedding-3-large'
      FROM (SELECT d.id, d.tenant, d.collection, o, 1 + (random() * 299)::int AS a,
                   1 + (random() * 999)::int AS b, 1 + (random() * 999)::int AS c
              FROM documents d CROSS JOIN generate_series(0, 3) o) r
      JOIN centres ce ON ce.c = r.a
      JOIN noise n1 ON n1.k = r.b
      JOIN noise n2 ON n2.k = r.c;
ANALYZE documents;
ANALYZE chunks;
