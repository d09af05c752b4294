//! A gRPC service behind `SessionLayer`, with `Login`, `Whoami` and `Logout`,
//! and a client that walks through them.
//!
//! ```text
//! cargo run --example tonic_greeter --features tonic
//! ```
//!
//! starts the server on http://127.0.0.1:50051 (`PORT` changes the port),
//! then runs its own client against it and prints each call: `Login` →
//! `Whoami` → `Logout` → `Whoami` again, which the server refuses because
//! the token died with the logout. To keep the server running for another
//! client, and to call it from a second terminal:
//!
//! ```text
//! cargo run --example tonic_greeter --features tonic -- --serve
//! cargo run --example tonic_greeter --features tonic -- --client
//! ```
//!
//! gRPC clients keep no cookies, so the layer carries the token in the
//! `x-session-token` metadata entry: `Login` answers with it, and later
//! calls send it back. The protobuf messages are derived with prost and the
//! service is routed by hand, so no `protoc` is needed to build it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_session_guard::{Key, MemoryStore, SessionLayer, TonicSessionExt, Transport};

/// The metadata entry (HTTP/2 header) that carries the session token.
pub const TOKEN_HEADER: &str = "x-session-token";

/// `Login` request: the user to sign in (a real service checks a password).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LoginRequest {
    /// The user.
    #[prost(string, tag = "1")]
    pub user: String,
}

/// The empty message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// Who is signed in.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoamiReply {
    /// The user.
    #[prost(string, tag = "1")]
    pub user: String,
}

async fn login(request: Request<LoginRequest>) -> Result<Response<Empty>, Status> {
    let session = request.session()?;
    let user = request.into_inner().user;
    if user.is_empty() {
        return Err(Status::invalid_argument("a user is required"));
    }
    session
        .login(user)
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    // The layer puts the new token into the response metadata.
    Ok(Response::new(Empty {}))
}

async fn whoami(request: Request<Empty>) -> Result<Response<WhoamiReply>, Status> {
    let session = request.session()?;
    let user = session
        .user_id()
        .ok_or_else(|| Status::unauthenticated("no session; call Login first"))?;
    Ok(Response::new(WhoamiReply { user }))
}

async fn logout(request: Request<Empty>) -> Result<Response<Empty>, Status> {
    let session = request.session()?;
    session
        .logout()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    Ok(Response::new(Empty {}))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Adapts an async fn to tonic's unary service trait.
struct Unary<F>(F);

impl<F, Fut, Req, Res> UnaryService<Req> for Unary<F>
where
    F: Fn(Request<Req>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<Res>, Status>> + Send + 'static,
{
    type Response = Res;
    type Future = BoxFuture<Result<Response<Res>, Status>>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        Box::pin((self.0.clone())(request))
    }
}

/// The `greeter.Greeter` service, routed by method path.
#[derive(Clone, Default)]
pub struct GreeterServer;

impl NamedService for GreeterServer {
    const NAME: &'static str = "greeter.Greeter";
}

impl tower::Service<http::Request<Body>> for GreeterServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // One codec per method: each has its own request and reply types.
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/greeter.Greeter/Login" => {
                    Grpc::new(ProstCodec::default())
                        .unary(Unary(login), request)
                        .await
                }
                "/greeter.Greeter/Whoami" => {
                    Grpc::new(ProstCodec::default())
                        .unary(Unary(whoami), request)
                        .await
                }
                "/greeter.Greeter/Logout" => {
                    Grpc::new(ProstCodec::default())
                        .unary(Unary(logout), request)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// The session layer this service runs behind: tokens in `x-session-token`.
pub fn sessions() -> SessionLayer {
    SessionLayer::new(MemoryStore::default(), Key::generate())
        .with_transport(Transport::header(TOKEN_HEADER))
}

/// Serves the greeter on `listener` until the task is dropped.
///
/// # Errors
///
/// When the server fails.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    serve_with(listener, sessions()).await
}

/// Serves the greeter on `listener` behind `layer`.
///
/// # Errors
///
/// When the server fails.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    layer: SessionLayer,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(GreeterServer)
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
}

/// A hand-written client for the greeter.
pub mod client {
    use http::uri::PathAndQuery;
    use tonic::transport::Channel;
    use tonic::{Request, Response, Status};
    use tonic_prost::ProstCodec;

    use super::{Empty, LoginRequest, WhoamiReply};

    /// Calls the greeter over one channel.
    #[derive(Clone)]
    pub struct GreeterClient {
        grpc: tonic::client::Grpc<Channel>,
    }

    impl GreeterClient {
        /// Connects to `url` (such as `http://127.0.0.1:50051`).
        ///
        /// # Errors
        ///
        /// When the connection fails.
        pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
            let channel = Channel::from_shared(url)
                .expect("a valid URL")
                .connect()
                .await?;
            Ok(Self {
                grpc: tonic::client::Grpc::new(channel),
            })
        }

        async fn unary<Req, Res>(
            &mut self,
            path: &'static str,
            request: Request<Req>,
        ) -> Result<Response<Res>, Status>
        where
            Req: prost::Message + Send + Sync + 'static,
            Res: prost::Message + Default + Send + Sync + 'static,
        {
            self.grpc
                .ready()
                .await
                .map_err(|err| Status::unavailable(err.to_string()))?;
            self.grpc
                .unary(
                    request,
                    PathAndQuery::from_static(path),
                    ProstCodec::default(),
                )
                .await
        }

        /// `Login`.
        ///
        /// # Errors
        ///
        /// The call's status.
        pub async fn login(
            &mut self,
            request: Request<LoginRequest>,
        ) -> Result<Response<Empty>, Status> {
            self.unary("/greeter.Greeter/Login", request).await
        }

        /// `Whoami`.
        ///
        /// # Errors
        ///
        /// The call's status.
        pub async fn whoami(
            &mut self,
            request: Request<Empty>,
        ) -> Result<Response<WhoamiReply>, Status> {
            self.unary("/greeter.Greeter/Whoami", request).await
        }

        /// `Logout`.
        ///
        /// # Errors
        ///
        /// The call's status.
        pub async fn logout(&mut self, request: Request<Empty>) -> Result<Response<Empty>, Status> {
            self.unary("/greeter.Greeter/Logout", request).await
        }
    }
}

/// One call of the walkthrough and what came of it, as it is printed.
pub struct Step {
    /// The call, such as `Whoami (with the token)`.
    pub call: &'static str,
    /// What the server answered.
    pub outcome: String,
}

/// Signs in as `user` at the greeter on `url`, asks who is signed in, signs
/// out, and shows that the old token is refused; `report` sees each step as
/// it completes.
///
/// # Errors
///
/// A sentence saying which step did not go as a session should: a call
/// that failed, no token after `Login`, the wrong user, or a token that
/// still works after `Logout`.
pub async fn walkthrough(
    url: String,
    user: &str,
    mut report: impl FnMut(&Step),
) -> Result<Vec<Step>, String> {
    use tonic::metadata::MetadataValue;

    fn with_token<T>(message: T, token: &MetadataValue<tonic::metadata::Ascii>) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(TOKEN_HEADER, token.clone());
        request
    }

    let mut steps = Vec::new();
    let mut step = |call: &'static str, outcome: String| {
        let step = Step { call, outcome };
        report(&step);
        steps.push(step);
    };
    let mut client = client::GreeterClient::connect(url.clone())
        .await
        .map_err(|err| format!("cannot connect to {url}: {err}"))?;

    let login = client
        .login(Request::new(LoginRequest {
            user: user.to_owned(),
        }))
        .await
        .map_err(|status| format!("Login failed: {status}"))?;
    let token = login
        .metadata()
        .get(TOKEN_HEADER)
        .filter(|token| !token.is_empty())
        .cloned()
        .ok_or_else(|| format!("Login answered without a token in `{TOKEN_HEADER}`"))?;
    // The token is a credential: the client keeps it and never prints it.
    step(
        "Login",
        format!(
            "OK; the session token came back in `{TOKEN_HEADER}` ({} characters)",
            token.len()
        ),
    );

    let me = client
        .whoami(with_token(Empty {}, &token))
        .await
        .map_err(|status| format!("Whoami with the token failed: {status}"))?
        .into_inner()
        .user;
    if me != user {
        return Err(format!("Whoami answered {me:?} instead of {user:?}"));
    }
    step("Whoami (with the token)", format!("OK: signed in as {me}"));

    let logout = client
        .logout(with_token(Empty {}, &token))
        .await
        .map_err(|status| format!("Logout failed: {status}"))?;
    let forget = logout
        .metadata()
        .get(TOKEN_HEADER)
        .is_some_and(|value| value.is_empty());
    if !forget {
        return Err(format!(
            "Logout did not tell the client to forget its token (an empty `{TOKEN_HEADER}`)"
        ));
    }
    step(
        "Logout (with the token)",
        "OK; the server told the client to forget the token".to_owned(),
    );

    match client.whoami(with_token(Empty {}, &token)).await {
        Ok(reply) => {
            return Err(format!(
                "Whoami with the old token still answered {:?} after Logout",
                reply.into_inner().user
            ))
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => step(
            "Whoami (the same token again)",
            format!("refused: {:?}, \"{}\"", status.code(), status.message()),
        ),
        Err(status) => return Err(format!("Whoami after Logout failed oddly: {status}")),
    }
    Ok(steps)
}

/// What the program was asked to do.
enum Mode {
    /// Serve, and walk through the calls with a client (the default).
    Both,
    /// Serve until stopped (`--serve`).
    Serve,
    /// Walk through the calls against a running server (`--client`).
    Client,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let mode = match std::env::args().nth(1).as_deref() {
        None => Mode::Both,
        Some("--serve") => Mode::Serve,
        Some("--client") => Mode::Client,
        Some(other) => {
            eprintln!("unknown argument {other:?}; use no argument, --serve or --client");
            std::process::exit(2);
        }
    };
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .expect("PORT must be a port number such as 50051"),
        Err(_) => 50051,
    };
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("http://{address}");

    let server = if let Mode::Client = mode {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|err| {
                panic!("cannot listen on {address}: {err}; set PORT to a free port")
            });
        println!("greeter listening on {url}");
        Some(tokio::spawn(serve(listener)))
    };
    if let (Mode::Serve, Some(server)) = (&mode, server) {
        server.await.unwrap().unwrap();
        return;
    }

    println!("client calling {url}:");
    let mut number = 0;
    let result = walkthrough(url, "alice", |step| {
        number += 1;
        println!("  {number}. {:<30} -> {}", step.call, step.outcome);
    })
    .await;
    if let Err(problem) = result {
        eprintln!("the walkthrough went wrong: {problem}");
        std::process::exit(1);
    }
}
