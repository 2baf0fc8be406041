//! Backups at the table level: every table is either backed up or left out on purpose,
//! an export imports into a fresh store of the same backend as the same rows, and a bad
//! chunk aborts the import with nothing kept.

use async_trait::async_trait;
use keyward_core::backup::{Cell, ChunkSink, ChunkSource, TableChunk};

use super::*;

#[derive(Default)]
struct Chunks(Vec<TableChunk>);

#[async_trait]
impl ChunkSink for Chunks {
    async fn put(&mut self, chunk: TableChunk) -> keyward_core::Result<()> {
        self.0.push(chunk);
        Ok(())
    }
}

#[async_trait]
impl ChunkSource for Chunks {
    async fn next_chunk(&mut self) -> keyward_core::Result<Option<TableChunk>> {
        Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
    }
}

/// Rows per table as sorted text, columns named.
fn tables(chunks: &[TableChunk]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for chunk in chunks {
        let rows = out.entry(chunk.table.clone()).or_default();
        for row in &chunk.rows {
            let mut named: Vec<(&String, &Cell)> = chunk.columns.iter().zip(row).collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            rows.push(format!("{named:?}"));
        }
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

async fn export(store: &Arc<dyn Store>, raw_usage: bool) -> Vec<TableChunk> {
    let mut chunks = Chunks::default();
    let schema = store
        .export_tables(raw_usage, &mut chunks)
        .await
        .expect("export");
    assert_eq!(schema, keyward_store::SCHEMA_VERSION);
    chunks.0
}

async fn every_table_is_backed_up_or_left_out_on_purpose(db: &TestDatabase, _: Arc<dyn Store>) {
    let named: BTreeSet<&str> = keyward_store::BACKED_UP
        .iter()
        .chain(keyward_store::LEFT_OUT)
        .copied()
        .collect();
    let missing: Vec<String> = db
        .table_names()
        .await
        .into_iter()
        .filter(|t| !named.contains(t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tables neither backed up nor left out on purpose (add them to keyward_store::BACKED_UP or LEFT_OUT): {missing:?}"
    );
}

async fn an_export_imports_as_the_same_rows(db: &TestDatabase, store: Arc<dyn Store>) {
    let r = rng();
    // More keys than one chunk holds; booleans, bytes, nulls and reals all travel.
    for i in 0..230 {
        add(
            &store,
            &r,
            "openai",
            "production",
            &format!("k{i}"),
            1_000 + i,
        )
        .await;
    }
    let key = add(&store, &r, "anthropic", "staging", "nulls", 5_000).await;
    store
        .record_usage(&[usage(
            1_764_000_000_000,
            Some(&key.id),
            None,
            Outcome::Success,
        )])
        .await
        .expect("usage");
    for n in 0..5 {
        store
            .append_audit(&AuditDraft {
                at: ts(1_764_000_000_000 + n),
                actor_kind: ActorKind::User,
                actor_id: "usr_1".into(),
                actor_name: "alice".into(),
                source: None,
                action: "key.update".into(),
                target: Some(format!("key:{}", key.id)),
                outcome: AuditOutcome::Success,
                details: "{\"n\":1}".into(),
            })
            .await
            .expect("audit");
    }
    let exported = export(&store, true).await;
    assert!(exported.iter().all(|c| c.rows.len() <= 200));
    assert!(
        !exported
            .iter()
            .any(|c| c.table == "sessions" || c.table == "change_feed")
    );
    assert!(exported.iter().any(|c| c.table == "usage_records"));
    assert!(
        !export(&store, false)
            .await
            .iter()
            .any(|c| c.table == "usage_records")
    );

    let Some(fresh) = db.another().await else {
        return;
    };
    let target = fresh.store().await;
    let mut source = Chunks(exported.clone());
    let rows = target.import_tables(&mut source).await.expect("import");
    assert_eq!(
        rows,
        exported.iter().map(|c| c.rows.len() as u64).sum::<u64>()
    );
    assert_eq!(tables(&export(&target, true).await), tables(&exported));
    assert!(target.holds_a_vault().await.expect("holds"));
    // What the store reads back is the same, through its own queries.
    assert_eq!(
        target.key(&key.id).await.expect("key"),
        store.key(&key.id).await.expect("key")
    );
    let head = target.audit_head().await.expect("head");
    assert_eq!(head, store.audit_head().await.expect("head"));
    // Raw usage ids go on after the restored ones.
    target
        .record_usage(&[usage(
            1_764_000_100_000,
            Some(&key.id),
            None,
            Outcome::Success,
        )])
        .await
        .expect("usage after restore");
    target.close().await;
}

async fn a_bad_chunk_aborts_the_import_and_keeps_nothing(db: &TestDatabase, store: Arc<dyn Store>) {
    let r = rng();
    add(&store, &r, "openai", "production", "main", 1_000).await;
    let exported = export(&store, false).await;
    let Some(fresh) = db.another().await else {
        return;
    };
    let target = fresh.store().await;
    add(&target, &r, "openai", "production", "kept", 2_000).await;
    let before = tables(&export(&target, false).await);
    for (bad, code) in [
        (
            TableChunk {
                table: "nope".into(),
                columns: vec!["id".into()],
                rows: vec![vec![Cell::Integer(1)]],
            },
            "backup_unknown_table",
        ),
        (
            TableChunk {
                table: "users".into(),
                columns: vec!["id; DROP TABLE keys".into()],
                rows: vec![vec![Cell::Integer(1)]],
            },
            "backup_unknown_column",
        ),
        (
            TableChunk {
                table: "users".into(),
                columns: vec!["id".into(), "username".into()],
                rows: vec![vec![Cell::Integer(1)]],
            },
            "backup_bad_row",
        ),
    ] {
        let mut chunks = exported.clone();
        chunks.push(bad);
        let e = target
            .import_tables(&mut Chunks(chunks))
            .await
            .expect_err("a bad chunk must fail the import");
        assert_eq!(e.code, code);
        assert_eq!(tables(&export(&target, false).await), before, "{code}");
    }
    target.close().await;
}

conformance_with_db!(
    every_table_is_backed_up_or_left_out_on_purpose,
    an_export_imports_as_the_same_rows,
    a_bad_chunk_aborts_the_import_and_keeps_nothing,
);
