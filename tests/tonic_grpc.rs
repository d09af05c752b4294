//! A real tonic client against the greeter example over a real socket.

#[path = "../examples/tonic_greeter.rs"]
mod greeter;

use greeter::client::GreeterClient;
use greeter::{Empty, LoginRequest, TOKEN_HEADER};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

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
