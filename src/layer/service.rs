//! [`SessionService`]: the service a [`SessionLayer`](super::SessionLayer) makes.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::builder::Config;
use super::flow::handle;
use super::ResponseFuture;

/// The service made by [`SessionLayer`](super::SessionLayer).
///
/// It works with any request body and any response body that implements
/// `Default` (the body of the layer's own `503`, `409`, `429` and `401`
/// answers). axum's `Router::layer` converts bodies for you; with a bare
/// `ServiceBuilder`, a layer whose response body has no `Default` (such as
/// tower-http's `TraceLayer`) goes outside the session layer, or its body is
/// mapped first.
///
/// What the handler wrote is committed whatever the response status. A
/// timeout placed *inside* the session layer still lets the writes made
/// before it fired be saved; place timeouts outside the session layer when
/// a timed-out request must leave the session untouched.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> SessionService<S> {
    pub(super) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was driven to readiness is the one that must be
        // called; keep a fresh clone for the next request.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(Box::pin(handle(Arc::clone(&self.config), inner, request)))
    }
}
