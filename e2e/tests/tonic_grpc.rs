//! A real tonic client against the greeter example over a real socket.

#[path = "../examples/tonic_greeter.rs"]
mod greeter;

use greeter::client::GreeterClient;
use greeter::{Empty, LoginRequest, TOKEN_HEADER};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use tower_session_guard::{Key, MemoryStore, SessionLayer};

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(TOKEN_HEADER, MetadataValue::try_from(token).unwrap());
    request
}

#[tokio::test]
async fn login_whoami_and_logout_over_grpc() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(greeter::serve(listener));
    let mut client = GreeterClient::connect(format!("http://{address}"))
        .await
        .unwrap();

    let anonymous = client.whoami(Request::new(Empty {})).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let login = client
        .login(Request::new(LoginRequest {
            user: "grpc-user".into(),
        }))
        .await
        .unwrap();
    let token = login
        .metadata()
        .get(TOKEN_HEADER)
        .expect("login returns the token in response metadata")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!token.is_empty());

    let me = client.whoami(with_token(Empty {}, &token)).await.unwrap();
    assert_eq!(me.into_inner().user, "grpc-user");

    let forged = client
        .whoami(with_token(Empty {}, &"A".repeat(token.len())))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);

    let logout = client.logout(with_token(Empty {}, &token)).await.unwrap();
    assert_eq!(
        logout
            .metadata()
            .get(TOKEN_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref(),
        Some(""),
        "logout tells the client to forget its token"
    );
    let after = client
        .whoami(with_token(Empty {}, &token))
        .await
        .unwrap_err();
    assert_eq!(
        after.code(),
        Code::Unauthenticated,
        "the token is dead after logout"
    );
    server.abort();
}

#[tokio::test]
async fn the_client_address_comes_from_tonic_connect_info() {
    let layer = greeter::sessions();
    let admin = layer.sessions();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(greeter::serve_with(listener, layer));
    let mut client = GreeterClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    client
        .login(Request::new(LoginRequest {
            user: "located".into(),
        }))
        .await
        .unwrap();
    let sessions = admin.list("located").await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].ip, Some(std::net::IpAddr::from([127, 0, 0, 1])));
    server.abort();
}

#[tokio::test]
async fn the_example_client_walks_through_login_whoami_logout_and_refusal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(greeter::serve(listener));
    let mut printed = Vec::new();
    let steps = greeter::walkthrough(format!("http://{address}"), "walker", |step| {
        printed.push(format!("{} -> {}", step.call, step.outcome));
    })
    .await
    .expect("every step goes as a session should");
    let calls: Vec<_> = steps.iter().map(|step| step.call).collect();
    assert_eq!(
        calls,
        [
            "Login",
            "Whoami (with the token)",
            "Logout (with the token)",
            "Whoami (the same token again)"
        ]
    );
    assert_eq!(printed.len(), 4, "each step is reported as it completes");
    assert!(printed[1].ends_with("signed in as walker"), "{printed:?}");
    assert!(
        printed[3].contains("refused: Unauthenticated"),
        "{printed:?}"
    );
    server.abort();
}

#[tokio::test]
async fn the_walkthrough_fails_when_login_gives_the_client_no_token() {
    // Behind a layer that answers with a cookie, which gRPC clients ignore.
    let cookies = SessionLayer::new(MemoryStore::default(), Key::generate());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(greeter::serve_with(listener, cookies));
    let mut printed = 0;
    let problem = greeter::walkthrough(format!("http://{address}"), "walker", |_| printed += 1)
        .await
        .err()
        .expect("a login without a token is reported");
    assert!(
        problem.starts_with("Login answered without a token"),
        "{problem}"
    );
    assert_eq!(printed, 0, "no step is reported as done");

    let nobody = greeter::walkthrough("http://127.0.0.1:1".to_owned(), "walker", |_| {}).await;
    assert!(nobody.err().unwrap().starts_with("cannot connect to"));
    server.abort();
}
