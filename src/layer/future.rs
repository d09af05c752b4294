//! [`ResponseFuture`], the future a [`SessionService`](super::SessionService) returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

/// The response future of [`SessionService`](super::SessionService).
///
/// It is boxed: the request awaits the store twice around the inner
/// service, and the store futures are already boxed trait-object futures,
/// so a hand-written state machine would save one allocation at the cost
/// of a great deal of `unsafe`-adjacent pinning code.
pub struct ResponseFuture<ResBody, E> {
    future: Boxed<ResBody, E>,
}

type Boxed<ResBody, E> = Pin<Box<dyn Future<Output = Result<Response<ResBody>, E>> + Send>>;

impl<ResBody, E> ResponseFuture<ResBody, E> {
    pub(super) fn new(future: Boxed<ResBody, E>) -> Self {
        Self { future }
    }
}

impl<ResBody, E> Future for ResponseFuture<ResBody, E> {
    type Output = Result<Response<ResBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<ResBody, E> fmt::Debug for ResponseFuture<ResBody, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
