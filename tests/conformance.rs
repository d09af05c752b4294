//! The store contract suite on the in-memory store.

use tower_session_guard::store::{conformance, MokaStore};

#[tokio::test]
async fn moka_store_passes_the_store_contract() {
    conformance::run(&MokaStore::new(10_000)).await;
}

#[tokio::test]
async fn moka_store_stays_within_its_bound() {
    let store = MokaStore::new(100);
    for _ in 0..1_000 {
        let record = conformance::sample_record(None);
        assert!(tower_session_guard::SessionStore::create(&store, &record)
            .await
            .unwrap());
    }
    store.run_pending_tasks().await;
    assert!(store.len() <= 100, "{} sessions held", store.len());
}
