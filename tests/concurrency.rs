//! Concurrent requests on one session keep every write.

mod common;

use common::{app, send};
use tower_session_guard::{Key, MemoryStore, SessionLayer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_writing_distinct_keys_all_persist() {
    let app = app(SessionLayer::new(MemoryStore::new(100), Key::generate()));
    let token = send(&app, "GET", "/count", None).await.token().unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let reply =
                    send(&app, "POST", &format!("/set/key{i}/value{i}"), Some(&token)).await;
                assert_eq!(reply.status, http::StatusCode::OK);
                assert_eq!(reply.token(), None, "no new id for a plain write");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..64 {
        let reply = send(&app, "GET", &format!("/get/key{i}"), Some(&token)).await;
        assert_eq!(reply.body, format!("value{i}"), "key{i} was lost");
    }
    assert_eq!(send(&app, "GET", "/read", Some(&token)).await.body, "1");
}
