//! The document-retrieval schema shipped in `migrations/`: it applies, rolls back and applies
//! again with pgvector; the planner uses the HNSW index for the canonical similarity query at a
//! high ef_search and the metadata GIN index for containment; HNSW recall on a small set.

use std::path::Path;

use pgsidecar::migrate::{ApplyOptions, Migrator, lint, source};
use tokio_postgres::Client;

use crate::support::{cluster, direct, fresh_database, wait_until};

fn migrations() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
}

/// 30,000 documents, 0.1 % of them in German and half of them marked `half`; the first 2,000
/// have one chunk each, with embeddings around 30 cluster centres (a centre plus two of 500 noise vectors, added in
/// pgvector's C code so loading is quick); one small tenant.
async fn load(client: &Client) {
    client
        .batch_execute(
            "SELECT setseed(0.42);
             CREATE TEMP TABLE centres AS
                 SELECT c, array_agg(random() - 0.5) AS v FROM generate_series(1, 30) c,
                        generate_series(1, 3072) GROUP BY c;
             INSERT INTO documents (tenant, collection, source_uri, title, metadata, content_hash)
                  SELECT CASE WHEN g <= 30 THEN 'small' ELSE 'big' END, 'docs', 'https://example.com/' || g,
                         'doc ' || g,
                         jsonb_build_object('lang', CASE WHEN g % 1000 = 0 THEN 'de' ELSE 'en' END, 'n', g,
                                            'half', g % 2 = 0),
                         md5(g::text)
                    FROM generate_series(1, 30000) g;
             CREATE TEMP TABLE noise AS
                 SELECT k, (array_agg((random() - 0.5) * 0.2))::vector AS v FROM generate_series(1, 500) k,
                        generate_series(1, 3072) GROUP BY k;
             INSERT INTO chunks (document_id, tenant, collection, ordinal, content, token_count, embedding, embedding_model)
                  SELECT d.id, d.tenant, d.collection, 0, 'database index chunk ' || d.id, 5,
                         ce.v::vector + n1.v + n2.v, 'text-embedding-3-large'
                    FROM documents d JOIN centres ce ON ce.c = 1 + d.id % 30
                    JOIN noise n1 ON n1.k = 1 + d.id % 500
                    JOIN noise n2 ON n2.k = 1 + (d.id / 500 + d.id * 7) % 500
                   WHERE d.id <= 2000;
             ANALYZE documents; ANALYZE chunks;",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_lints_clean_applies_rolls_back_and_applies_again() {
    let loaded = source::load(migrations()).unwrap();
    assert_eq!(loaded.len(), 5);
    let findings: Vec<_> = loaded.iter().flat_map(lint::lint).collect();
    assert!(findings.is_empty(), "{findings:#?}");
    let db = fresh_database().await;
    let migrator = Migrator::open(&cluster().url(&db), migrations())
        .await
        .unwrap();
    assert_eq!(
        migrator
            .apply(&ApplyOptions::default())
            .await
            .unwrap()
            .applied
            .len(),
        5
    );
    let undone = migrator
        .rollback(
            Some(0),
            &ApplyOptions {
                maintenance_window: Some(
                    pgsidecar::migrate::MaintenanceWindow::parse("now").unwrap(),
                ),
                ..ApplyOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(undone.len(), 5);
    let client = direct(&db).await;
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname IN ('documents', 'chunks')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(
        migrator
            .apply(&ApplyOptions::default())
            .await
            .unwrap()
            .applied
            .len(),
        5
    );
}

async fn explain(client: &Client, sql: &str) -> String {
    client
        .query(&format!("EXPLAIN {sql}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

const ANN: &str = "WITH candidates AS (
        SELECT id, embedding FROM chunks
         WHERE tenant = 'big' AND collection = 'docs'
         ORDER BY embedding::halfvec(3072) <=> (SELECT embedding FROM chunks WHERE id = $ID)::halfvec(3072)
         LIMIT 40)
    SELECT id FROM candidates
     ORDER BY embedding <=> (SELECT embedding FROM chunks WHERE id = $ID) LIMIT 10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_uses_the_indexes_and_hnsw_recall_holds() {
    let db = fresh_database().await;
    let migrator = Migrator::open(&cluster().url(&db), migrations())
        .await
        .unwrap();
    migrator.apply(&ApplyOptions::default()).await.unwrap();
    let client = direct(&db).await;
    load(&client).await;

    // The canonical queries' settings (docs/retrieval-queries.md), at an ef_search far above the
    // ~90 where the planner would otherwise abandon the HNSW index.
    client
        .batch_execute(
            "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off;
             SET LOCAL hnsw.ef_search = 400; SET LOCAL hnsw.iterative_scan = relaxed_order;",
        )
        .await
        .unwrap();
    let gin = explain(
        &client,
        "SELECT id FROM documents WHERE metadata @> '{\"lang\": \"de\"}'",
    )
    .await;
    assert!(
        gin.contains("Bitmap Index Scan on documents_metadata"),
        "{gin}"
    );
    let plan = explain(&client, &ANN.replace("$ID", "1")).await;
    assert!(plan.contains("chunks_embedding_hnsw"), "{plan}");

    let mut found = 0;
    let queries = 20;
    for q in 1..=queries {
        let id = 30 + q * 97;
        let ann: Vec<i64> = client
            .query(&ANN.replace("$ID", &id.to_string()), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let exact: Vec<i64> = client
            .query(
                &format!(
                    "SELECT id FROM chunks WHERE tenant = 'big' AND collection = 'docs'
                      ORDER BY embedding <=> (SELECT embedding FROM chunks WHERE id = {id})
                      LIMIT 10"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        found += ann.iter().filter(|id| exact.contains(id)).count();
    }
    client.batch_execute("COMMIT").await.unwrap();
    #[allow(clippy::cast_precision_loss)]
    let recall = found as f64 / f64::from(queries * 10);
    eprintln!("HNSW recall@10 over {queries} queries on 2,000 chunks: {recall:.3}");
    assert!(recall >= 0.9, "recall@10 {recall}");
}

/// A backup of the retrieval schema with real `vector` data restores with the same content
/// hashes, and those hashes see a change to one embedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_vector_data_restores_with_matching_hashes() {
    let db = fresh_database().await;
    let url = cluster().url(&db);
    let migrator = Migrator::open(&url, migrations()).await.unwrap();
    migrator.apply(&ApplyOptions::default()).await.unwrap();
    let client = crate::support::direct(&db).await;
    load(&client).await;
    let dump =
        std::env::temp_dir().join(format!("pgsidecar-it-vectors-{}.dump", std::process::id()));
    let manifest = pgsidecar::backup::create(&url, &dump).await.unwrap();
    let chunks = |m: &pgsidecar::backup::Manifest| {
        m.tables
            .iter()
            .find(|t| t.table == "public.chunks")
            .cloned()
            .unwrap()
    };
    assert_eq!(chunks(&manifest).rows, 2000);
    let report = pgsidecar::backup::verify(&dump, &cluster().url("postgres"), Some(&url))
        .await
        .unwrap();
    assert_eq!(report.tables_checked, manifest.tables.len());

    client
        .batch_execute(
            "UPDATE chunks SET embedding = embedding + array_fill(0.0001::real, ARRAY[3072])::vector WHERE id = (SELECT min(id) FROM chunks)",
        )
        .await
        .unwrap();
    let changed = pgsidecar::backup::create(&url, &dump).await.unwrap();
    assert_ne!(
        chunks(&changed).hash,
        chunks(&manifest).hash,
        "the content hash covers the embeddings"
    );
    let _ = std::fs::remove_file(&dump);
    let _ = std::fs::remove_file(pgsidecar::backup::manifest_path(&dump));
}

/// `retrieval.search`'s chunk ids and the path it took, for the chunk `q`'s embedding.
async fn search(
    client: &Client,
    tenant: &str,
    filter: Option<&str>,
    exact_below: i32,
    q: i64,
) -> (Vec<i64>, Option<String>) {
    let rows = client
        .query(
            "SELECT s.chunk_id, s.path FROM retrieval.search($1, 'docs',
                 (SELECT embedding FROM chunks WHERE id = $2), $3::text::jsonb, 10, $4) s",
            &[&tenant, &q, &filter, &exact_below],
        )
        .await
        .unwrap();
    let path = rows.first().map(|r| r.get(1));
    (rows.iter().map(|r| r.get::<_, i64>(0)).collect(), path)
}

/// The exact top 10 among the chunks that pass the tenant and metadata filter.
async fn exact(client: &Client, tenant: &str, filter: Option<&str>, q: i64) -> Vec<i64> {
    client
        .query(
            "SELECT c.id FROM chunks c
              WHERE c.tenant = $1 AND c.collection = 'docs'
                AND ($3::text IS NULL OR c.document_id IN
                     (SELECT id FROM documents WHERE metadata @> $3::text::jsonb))
              ORDER BY c.embedding <=> (SELECT embedding FROM chunks WHERE id = $2)
              LIMIT 10",
            &[&tenant, &q, &filter],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

/// The share of `truth` (a top 10) that `found` holds.
fn recall(found: &[i64], truth: &[i64]) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let hits = found.iter().filter(|id| truth.contains(id)).count() as f64;
    hits / 10.0
}

/// The index `retrieval.search` walks on its ANN path (migration 0003).
const SEARCH_INDEX: &str = "chunks_embedding_hnsw";

/// `retrieval.search` against exact answers: the exact path returns exactly the nearest chunks
/// that pass the filter, the ANN path holds its recall with and without a metadata filter and
/// returns only chunks that pass it, and the path follows the filter's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_function_matches_exact_answers_and_picks_its_path_by_the_filter() {
    let db = fresh_database().await;
    let migrator = Migrator::open(&cluster().url(&db), migrations())
        .await
        .unwrap();
    migrator.apply(&ApplyOptions::default()).await.unwrap();
    let client = direct(&db).await;
    load(&client).await;
    let index_scans = || async {
        direct(&db)
            .await
            .query_one(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1",
                &[&SEARCH_INDEX],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let german = Some(r#"{"lang": "de"}"#);
    let half = Some(r#"{"half": true}"#);
    let scans_before = index_scans().await;
    let (mut unfiltered_recall, mut filtered_recall) = (0.0, 0.0);
    let queries: Vec<i64> = (0..10).map(|i| 40 + i * 150).collect();
    for &q in &queries {
        let (small, path) = search(&client, "small", None, 1000, q).await;
        assert_eq!(path.as_deref(), Some("exact"));
        assert_eq!(small, exact(&client, "small", None, q).await);
        let (few, path) = search(&client, "big", german, 1000, q).await;
        assert_eq!(path.as_deref(), Some("exact"));
        assert_eq!(few, exact(&client, "big", german, q).await);
        assert_eq!(few.len(), 2, "two German documents have chunks");
        let (walked, path) = search(&client, "big", german, 1, q).await;
        assert_eq!(path.as_deref(), Some("ann"));
        assert_eq!(
            walked, few,
            "the walk goes on until it has found the two German chunks"
        );
        let (forced_exact, path) = search(&client, "big", None, 5000, q).await;
        assert_eq!(path.as_deref(), Some("exact"));
        let truth = exact(&client, "big", None, q).await;
        assert_eq!(forced_exact, truth);
        let (ann, path) = search(&client, "big", None, 1000, q).await;
        assert_eq!(
            path.as_deref(),
            Some("ann"),
            "1,970 chunks pass: the graph walk"
        );
        assert_eq!(ann.len(), 10);
        unfiltered_recall += recall(&ann, &truth);
        let (halves, path) = search(&client, "big", half, 100, q).await;
        assert_eq!(path.as_deref(), Some("ann"), "~985 chunks pass");
        let half_truth = exact(&client, "big", half, q).await;
        assert_eq!(halves.len(), 10);
        filtered_recall += recall(&halves, &half_truth);
        let outside: i64 = client
            .query_one(
                "SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id
                  WHERE c.id = ANY($1) AND NOT d.metadata @> '{\"half\": true}'",
                &[&halves],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            outside, 0,
            "the walk returns only chunks that pass the filter"
        );
    }
    #[allow(clippy::cast_precision_loss)]
    let queries = queries.len() as f64;
    eprintln!(
        "retrieval.search recall@10: {:.3} unfiltered, {:.3} with a 50 % filter",
        unfiltered_recall / queries,
        filtered_recall / queries
    );
    assert!(
        unfiltered_recall / queries >= 0.95,
        "ANN recall@10 {unfiltered_recall}"
    );
    assert!(
        filtered_recall / queries >= 0.95,
        "filtered ANN recall@10 {filtered_recall}"
    );
    drop(client);
    // Statistics reach the shared counters when the session is idle or ends.
    wait_until("the HNSW index scans are counted", async || {
        index_scans().await >= scans_before + 30
    })
    .await;
}
