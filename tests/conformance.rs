//! The store contract suite on the in-memory store.

use tower_session_guard::store::{conformance, CachedStore, MemoryStore};

#[tokio::test]
async fn memory_store_passes_the_store_contract() {
    conformance::run(&MemoryStore::new(10_000)).await;
}

#[tokio::test]
async fn memory_store_stays_within_its_bound() {
    let store = MemoryStore::new(100);
    for _ in 0..1_000 {
        let record = conformance::sample_record(None);
        assert!(tower_session_guard::SessionStore::create(&store, &record)
            .await
            .unwrap());
    }
    store.run_pending_tasks().await;
    assert!(store.len() <= 100, "{} sessions held", store.len());
}

#[tokio::test]
async fn a_cache_over_the_memory_store_passes_the_store_contract() {
    conformance::run(&CachedStore::new(MemoryStore::new(10_000), 10_000)).await;
}
