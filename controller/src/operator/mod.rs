//! Kubernetes: the `ServerPool` custom resource and the operator that keeps its
//! pods alive.
//!
//! - [`app`]: `ringlb operator`: the leader-elected reconciler (and its operations port);
//! - [`crd`]: the resource types; `ringlb crd` prints the CRD generated from them;
//! - [`pod_slots`]: the names and slots of a pool's pods: desired logical names,
//!   their DNS-1123 pod names, which slot a replacement fills (pure);
//! - [`pods`]: the pods of a pool: their manifest, listing, creating, deleting;
//! - [`pod_probes`]: the pods' heartbeats, one task per pool on a clock;
//! - [`admin_secret`]: each pool's admin token Secret, created where none exists;
//! - [`reconciler`]: pods follow the pool: create, delete, replace, Events, status —
//!   the Kubernetes calls; the pass's pure decisions are [`pass_plan`] and [`status`],
//!   what every pass shares is `context`, its first step `observe`, its Events `events`,
//!   the pool's budget and admin Secret `owned`;
//! - [`leader`]: the Lease that lets one operator of a namespace reconcile;
//! - [`fixtures`] (tests): the fake API server every Kubernetes test runs against.
//!
//! The in-cluster proxy (`ringlb proxy`) reads these types from its own folder,
//! `cluster_proxy/`; nothing here reads it.

pub mod admin_secret;
#[cfg(test)]
pub(crate) mod api_usage_tests;
pub mod app;
mod context;
pub mod crd;
mod events;
#[cfg(test)]
pub mod fixtures;
pub mod leader;
mod observe;
#[cfg(test)]
pub(crate) mod over_time_tests;
mod owned;
pub mod pass_plan;
pub mod pod_probes;
pub mod pod_slots;
pub mod pods;
pub mod reconciler;
pub mod status;

pub use crd::{ServerPool, ServerPoolSpec, ServerPoolStatus};

/// The server-side timeout of each watch request (`timeoutSeconds`). kube-runtime's
/// watcher restarts a watch on which nothing, not even a bookmark, arrived for this
/// long plus 5 s: a half-open connection (kube-rs issues 1316 and 1796) then stalls
/// a proxy's or the operator's view for at most that, instead of for good.
pub const WATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The watch settings of every watch of both commands (see [`WATCH_TIMEOUT`]).
pub fn watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().timeout(WATCH_TIMEOUT.as_secs() as u32)
}

/// The API client both in-cluster commands use, and the namespace they work in:
/// `namespace`, or the pod's own (the kubeconfig's outside a cluster). Its calls
/// have deadlines ([`ApiDeadlines`]).
pub async fn connect(namespace: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    use anyhow::Context as _;
    let mut config = kube::Config::infer().await.context(
        "cannot reach the Kubernetes API (in a pod: its service account; outside: ~/.kube/config)",
    )?;
    config.connect_timeout = Some(API_CONNECT_TIMEOUT);
    // No `read_timeout`: hyper-timeout would apply it to every read of a
    // connection, a watch's included, and cut idle watches. See `ApiDeadlines`.
    config.read_timeout = None;
    let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
    let client =
        kube::Client::try_from(config).context("cannot build the Kubernetes API client")?;
    Ok((ApiDeadlines::wrap(client, API_CALL_TIMEOUT), namespace))
}

/// Time to open a connection to the API server.
pub const API_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest a call to the API (but a watch's events) may take, answer read
/// whole: far above what a healthy API server takes for this program's namespaced
/// lists and patches, and below its own 60 s request timeout, so that a half-open
/// connection fails a reconciler pass, an `/add` or a watch's (re)start instead of
/// hanging it while `/healthz` stays green.
pub const API_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Deadlines on the calls of a [`kube::Client`]: every call but a watch must be
/// answered, body included, within the deadline; a watch must send its response
/// head within it, and its events are then the watcher's to time: kube-runtime 5
/// restarts a watch on which nothing, not even a bookmark, came for its
/// server-side `timeoutSeconds` plus 5 s (kube-rs issues 1316 and 1796: a
/// half-open connection stalls a watch forever; kube-rs PR 1945).
#[derive(Clone)]
pub struct ApiDeadlines {
    inner: kube::Client,
    deadline: std::time::Duration,
}

/// A call to the API that did not finish within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the Kubernetes API did not answer within {0:?}")]
pub struct ApiTimeout(std::time::Duration);

impl ApiDeadlines {
    /// `client`, each of whose calls has `deadline`.
    pub fn wrap(client: kube::Client, deadline: std::time::Duration) -> kube::Client {
        let valid_until = *client.valid_until();
        let default_namespace = client.default_namespace().to_owned();
        kube::Client::new(
            Self {
                inner: client,
                deadline,
            },
            default_namespace,
        )
        .with_valid_until(valid_until)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Request<kube::client::Body>> for ApiDeadlines {
    type Response = http::Response<kube::client::Body>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let watch = request.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        let (inner, deadline) = (self.inner.clone(), self.deadline);
        Box::pin(async move {
            let call = async {
                let response = inner.send(request).await?;
                if watch {
                    return Ok(response);
                }
                let (parts, body) = response.into_parts();
                let body = body.collect_bytes().await?;
                Ok::<_, kube::Error>(http::Response::from_parts(parts, body.into()))
            };
            match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer.map_err(BoxError::from),
                Err(_elapsed) => Err(ApiTimeout(deadline).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, WatchParams};

    use super::*;
    use crate::operator::fixtures::FakeApiServer;

    /// The pods of `server`, through a client whose calls have deadlines.
    fn pods(server: &FakeApiServer) -> Api<Pod> {
        Api::namespaced(
            ApiDeadlines::wrap(server.client(), API_CALL_TIMEOUT),
            "default",
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_the_api_server_never_answers_fails_at_its_deadline() {
        // An API server behind a half-open connection: nothing comes back.
        let server = FakeApiServer::default();
        let _held = server.hold("GET", "/pods/server1");
        let started = tokio::time::Instant::now();
        let error = pods(&server).get("server1").await.unwrap_err();
        assert_eq!(started.elapsed(), API_CALL_TIMEOUT);
        assert!(
            error.to_string().contains("did not answer within 20s"),
            "{error}"
        );

        // A watch whose response head does not come fails alike.
        let _held = server.hold("GET", "/pods");
        let started = tokio::time::Instant::now();
        let error = pods(&server)
            .watch(&WatchParams::default(), "0")
            .await
            .err();
        assert_eq!(started.elapsed(), API_CALL_TIMEOUT);
        assert!(error.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_watch_is_not_cut_by_the_call_deadline() {
        // The watch's head comes back, its events never: nothing changes.
        let server = FakeApiServer::default();
        let mut events = pods(&server)
            .watch(&WatchParams::default(), "0")
            .await
            .expect("the watch's head arrives")
            .boxed();
        // Its events are the watcher's to time (its server-side timeout plus 5 s).
        let waited = tokio::time::timeout(3 * API_CALL_TIMEOUT, events.next()).await;
        assert!(waited.is_err(), "the watch stayed open, quiet: {waited:?}");
    }
}
