//! The storage API in a real host: key-value pages with a cursor (forward and
//! reverse), batch deletes, and `ctx.transaction` sub-units that fail alone.

use durable::testing::TestHost;
use durable_tests::Shelf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_with_a_cursor_forward_and_reverse_and_deleting_many() {
    let t = TestHost::start(|h| h.register::<Shelf>()).await;
    let shelf = t.get::<Shelf>("s");
    let keys: Vec<String> = (0..25).map(|i| format!("k/{i:02}")).collect();
    shelf.put_all(keys.clone(), 1).await.unwrap();
    shelf
        .put_all(vec!["j/0".into(), "l/0".into()], 1)
        .await
        .unwrap();
    for reverse in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = shelf
                .page("k/".into(), cursor.clone(), 10, reverse)
                .await
                .unwrap();
            assert!(page.len() <= 10);
            if page.is_empty() {
                break;
            }
            cursor = page.last().cloned();
            seen.extend(page);
        }
        let mut want = keys.clone();
        if reverse {
            want.reverse();
        }
        assert_eq!(seen, want, "reverse: {reverse}");
    }
    let removed = shelf
        .remove(vec!["k/00".into(), "k/01".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(removed, 2);
    let first = shelf.page("k/".into(), None, 1, false).await.unwrap();
    assert_eq!(first, ["k/02"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_undoes_only_its_own_writes() {
    let mut t = TestHost::start(|h| h.register::<Shelf>()).await;
    let shelf = t.get::<Shelf>("s");
    shelf.stock("a".into(), 2).await.unwrap();
    shelf.stock("b".into(), 1).await.unwrap();
    assert!(shelf.take(vec!["a".into(), "b".into()]).await.unwrap());
    // `a` is taken first, then `b` is out (CHECK n >= 0 fails): the sub-unit undoes
    // `a` and its key-value write, the turn keeps its log line.
    assert!(!shelf.take(vec!["a".into(), "b".into()]).await.unwrap());
    // Unknown item: refused the same way.
    assert!(!shelf.take(vec!["a".into(), "zzz".into()]).await.unwrap());
    let (a, log, took) = shelf.state("a".into()).await.unwrap();
    assert_eq!(a, 1, "only the first take happened");
    assert_eq!(log, ["a,b ok", "a,b refused", "a,zzz refused"]);
    assert_eq!(took, ["took/a", "took/b"]);
    let (b, _, _) = shelf.state("b".into()).await.unwrap();
    assert_eq!(b, 0);
    // All of it survives a crash (it was acknowledged).
    t.crash().await;
    let (a, log, _) = t.get::<Shelf>("s").state("a".into()).await.unwrap();
    assert_eq!((a, log.len()), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_map_to_structs_by_column_name() {
    use durable_tests::StockRow;
    let t = TestHost::start(|h| h.register::<Shelf>()).await;
    let shelf = t.get::<Shelf>("s");
    shelf.stock("b".into(), 2).await.unwrap();
    shelf.stock("a".into(), 5).await.unwrap();
    let row = |item: &str, n, note: Option<&str>| StockRow {
        item: item.into(),
        n,
        note: note.map(String::from),
    };
    assert_eq!(
        shelf.rows().await.unwrap(),
        [row("a", 5, None), row("b", 2, None)]
    );
    assert_eq!(
        shelf.row("b".into()).await.unwrap(),
        Some(row("b", 2, Some("counted")))
    );
    assert_eq!(shelf.row("zzz".into()).await.unwrap(), None);
    match shelf.misfit().await {
        Err(durable::CallError::Application(e)) => {
            assert_eq!(e.kind, durable::ErrorKind::Codec);
            assert!(e.message.contains("(item)"), "{}", e.message);
        }
        other => panic!("expected a Codec error, got {other:?}"),
    }
}

/// The per-object size limit: a call whose writes take the object past it is rolled
/// back with `ObjectTooLarge` (not applied), the object keeps serving, and once data is
/// deleted writes fit again; all of it across a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_past_its_size_limit_refuses_the_write_and_keeps_serving() {
    use durable::CallError;
    use durable_tests::Probe;
    let limit = 1u64 << 20;
    let mut t = TestHost::start(move |h| {
        h.register::<Probe>()
            .with_limits(move |l| l.max_object_bytes = limit)
    })
    .await;
    let p = t.get::<Probe>("big");
    let mut stored = Vec::new();
    let refused = loop {
        let key = format!("b{:02}", stored.len());
        match p.put_blob(key.clone(), 200_000).await {
            Ok(()) => stored.push(key),
            Err(e) => break e,
        }
        assert!(stored.len() < 20, "the limit never bit");
    };
    let CallError::ObjectTooLarge { size, limit: l } = refused else {
        panic!("expected ObjectTooLarge, got {refused:?}");
    };
    assert_eq!(l, limit);
    assert!(size > limit, "{size}");
    assert!(refused.is_retry_safe());
    assert!((3..=5).contains(&stored.len()), "{}", stored.len());
    // The refused write left nothing; what fit is all there.
    assert_eq!(p.blobs().await.unwrap(), stored);
    // Reads and small writes that fit still work; deleting makes room again.
    p.put("small".into(), 1).await.unwrap();
    assert!(p.delete_blob(stored[0].clone()).await.unwrap());
    p.put_blob("again".into(), 200_000).await.unwrap();
    t.crash().await;
    let p = t.get::<Probe>("big");
    let mut expect: Vec<String> = stored[1..].to_vec();
    expect.push("again".into());
    expect.sort();
    assert_eq!(p.blobs().await.unwrap(), expect);
}

/// A harness leaves nothing behind: its data directory goes when it is dropped, even
/// while the host's background thread is making new objects' spare files in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_harness_removes_its_data_directory() {
    for round in 0..8 {
        let t = TestHost::start(|h| h.register::<Shelf>()).await;
        // New objects take spare files, which the background thread then replaces.
        for i in 0..24 {
            t.get::<Shelf>(&format!("s{i}"))
                .put_all(vec!["k".into()], 1)
                .await
                .unwrap();
        }
        let dir = t.data_dir().to_owned();
        drop(t);
        assert!(!dir.exists(), "round {round}: {} is left", dir.display());
    }
}
