//! Leader election for the reconciler: of the `ringlb operator` processes of a
//! namespace, only the one holding the `coordination.k8s.io/v1` Lease reconciles;
//! the others watch and wait, and one of them takes over within the lease duration
//! after the leader dies. The leader gives the lease up when it stops (SIGTERM), so
//! that a rollout does not wait for the lease to expire.
//!
//! The lease itself is kube-lease-manager's (server-side apply, so two contenders
//! cannot both take it); this module turns it into a [`Leadership`] that the
//! reconciler reads, logs every transition, and counts them in `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// What the lease is called and how long it lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Who this process is in the lease's `holderIdentity`: the pod's name.
    pub identity: String,
    /// How long the lease holds without renewal: the longest a standby waits after
    /// the leader died (client-go's default for controllers: 15 s).
    pub duration: Duration,
    /// How long before expiry the leader renews.
    pub grace: Duration,
}

impl LeaseSettings {
    /// A lease renewed a third of `duration` before it ends (5 s of the default 15 s).
    pub fn new(name: &str, namespace: &str, identity: &str, duration: Duration) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            duration,
            grace: (duration / 3).max(Duration::from_secs(1)),
        }
    }
}

/// Whether this process leads, as last confirmed through the lease.
///
/// Leading needs two things: the lease manager said so, and the lease as last read
/// shows this process renewed it recently enough. The second is a deadline on the
/// wall clock (client-go's `RenewDeadline`): a leader whose renewals hang, or which
/// was paused, stops acting at `renewTime + duration − grace/2`, before a standby
/// may take the lease at `renewTime + duration`.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Milliseconds since the Unix epoch until which the lease is known to be ours.
    valid_until: Arc<AtomicU64>,
}

impl Leadership {
    /// Always the leader: for a process that is alone by construction (tests).
    #[cfg(test)]
    pub fn sole() -> Self {
        Self::fixed(true)
    }

    /// Never the leader: a standby (tests).
    #[cfg(test)]
    pub fn standby() -> Self {
        Self::fixed(false)
    }

    /// Leading when the test says so.
    #[cfg(test)]
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (sender, receiver) = watch::channel(false);
        let leadership = Self {
            leading: receiver,
            valid_until: Arc::new(AtomicU64::new(u64::MAX)),
        };
        (sender, leadership)
    }

    #[cfg(test)]
    fn fixed(leading: bool) -> Self {
        let (sender, receiver) = watch::channel(leading);
        // The channel keeps its last value once the sender is gone.
        drop(sender);
        Self {
            leading: receiver,
            valid_until: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow() && now_ms() < self.valid_until.load(Ordering::SeqCst)
    }

    /// Yields each time this process becomes the leader: the controller reconciles
    /// every pool then, instead of waiting for a standby's next recheck.
    pub fn gained(&self) -> impl futures::Stream<Item = ()> + Send + Sync + 'static {
        futures::stream::unfold(self.leading.clone(), |mut leading| async move {
            loop {
                leading.changed().await.ok()?;
                if *leading.borrow_and_update() {
                    return Some(((), leading));
                }
            }
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Campaigns for the lease until `stop`, then steps down (releases it if held).
/// Returns at once; the returned task ends after the step-down.
pub fn campaign(
    client: Client,
    settings: LeaseSettings,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, JoinHandle<()>) {
    let (leading, receiver) = watch::channel(false);
    let valid_until = Arc::new(AtomicU64::new(0));
    let leadership = Leadership {
        leading: receiver,
        valid_until: valid_until.clone(),
    };
    let confirmer = tokio::spawn(confirm(
        Api::namespaced(client.clone(), &settings.namespace),
        settings.clone(),
        valid_until.clone(),
    ));
    let task = tokio::spawn(async move {
        let _confirmer = AbortOnDrop(confirmer);
        let mut stop = std::pin::pin!(stop);
        let mut retry = Duration::from_secs(1);
        loop {
            // A fresh manager after every error: one whose renewal failed may still
            // believe it leads, and would never report the loss.
            let manager = tokio::select! {
                _ = &mut stop => return,
                manager = manager(&client, &settings) => manager,
            };
            let manager = match manager {
                Ok(manager) => manager,
                Err(error) => {
                    tracing::warn!(%error, lease = %settings.name, "cannot read the leader lease; retrying");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(settings.duration);
                    continue;
                }
            };
            retry = Duration::from_secs(1);
            let error = loop {
                tokio::select! {
                    _ = &mut stop => {
                        let was_leading = *leading.borrow();
                        set(&leading, false, &settings, &metrics);
                        // Safe when not leading too: it releases only our own lease.
                        match manager.release().await {
                            Ok(()) if was_leading => tracing::info!(identity = %settings.identity, "stepped down: lease released"),
                            Ok(()) => {}
                            Err(error) => tracing::warn!(%error, "could not release the lease; it expires by itself"),
                        }
                        return;
                    }
                    changed = manager.changed() => match changed {
                        Ok(now_leading) => {
                            if now_leading {
                                // Just taken: renewTime is now.
                                valid_until.store(deadline_after(now_ms(), &settings), Ordering::SeqCst);
                            }
                            set(&leading, now_leading, &settings, &metrics);
                        }
                        Err(error) => break error,
                    },
                }
            };
            // The lease could not be read or renewed: this process can no longer be
            // sure it leads, so it stops acting as the leader before it may expire.
            tracing::warn!(%error, lease = %settings.name, "leader lease unavailable");
            set(&leading, false, &settings, &metrics);
        }
    });
    (leadership, task)
}

/// When a lease renewed at `renewed_ms` stops counting as ours: half the grace
/// before it expires, so that this process has stopped before anyone may take it.
fn deadline_after(renewed_ms: u64, settings: &LeaseSettings) -> u64 {
    let margin = settings.duration.saturating_sub(settings.grace / 2);
    renewed_ms.saturating_add(margin.as_millis() as u64)
}

/// Reads the lease every quarter of the grace period and moves the deadline to what
/// its last renewal allows, while it names this process. A read that fails or
/// hangs moves nothing: the deadline then passes by itself.
async fn confirm(api: Api<Lease>, settings: LeaseSettings, valid_until: Arc<AtomicU64>) {
    let every = (settings.grace / 4).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Ok(Ok(lease)) = tokio::time::timeout(every, api.get(&settings.name)).await else {
            continue;
        };
        let Some(spec) = lease.spec else { continue };
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            continue;
        }
        if let Some(renewed) = spec.renew_time {
            let renewed_ms = renewed.0.as_millisecond().max(0) as u64;
            valid_until.fetch_max(deadline_after(renewed_ms, &settings), Ordering::SeqCst);
        }
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn manager(
    client: &Client,
    settings: &LeaseSettings,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration.as_secs().max(2))
        .with_grace(settings.grace.as_secs().max(1))
        .build()
        .await
}

/// Publishes a change of leadership, logs it and counts it.
fn set(leading: &watch::Sender<bool>, now: bool, settings: &LeaseSettings, metrics: &Metrics) {
    let before = leading.send_replace(now);
    metrics.leader.set(i64::from(now));
    if before != now {
        metrics.leader_transitions.inc();
        if now {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "leading: this process reconciles");
        } else {
            tracing::info!(identity = %settings.identity, lease = %settings.name, "not leading: reconciling stops");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against an in-memory API server that keeps Leases with resourceVersions and
    //! server-side apply's rule for the holder: applying `spec.holderIdentity` over a
    //! value another field manager set is a 409 Conflict. Real time, short leases.

    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

    #[derive(Default)]
    struct Store {
        /// PATCHes are held unanswered (an API server that hangs on writes).
        hang_patches: bool,
        held: Vec<tower_test::mock::SendResponse<Response<Body>>>,
        leases: HashMap<String, Value>,
        /// The field manager that set each lease's holder.
        holder_manager: HashMap<String, String>,
        version: u64,
    }

    #[derive(Clone, Default)]
    struct LeaseApi(Arc<Mutex<Store>>);

    impl LeaseApi {
        fn client(&self) -> Client {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let api = self.clone();
            tokio::spawn(async move {
                while let Some((request, respond)) = handle.next_request().await {
                    let method = request.method().to_string();
                    let uri = request.uri().clone();
                    let apply = request
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
                    let bytes = request.into_body().collect_bytes().await.unwrap();
                    let body: Value = serde_json::from_slice(&bytes)
                        .or_else(|_| serde_yaml::from_slice(&bytes))
                        .unwrap_or(Value::Null);
                    if method == "PATCH" && api.0.lock().unwrap().hang_patches {
                        api.0.lock().unwrap().held.push(respond);
                        continue;
                    }
                    let (code, answer) = api.answer(&method, &uri, apply, body);
                    respond.send_response(
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                            .unwrap(),
                    );
                }
            });
            Client::new(service, "default")
        }

        fn answer(&self, method: &str, uri: &http::Uri, apply: bool, body: Value) -> (u16, Value) {
            let mut store = self.0.lock().unwrap();
            let path = uri.path();
            let manager = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldManager="))
                .unwrap_or_default()
                .to_owned();
            let name = path
                .strip_prefix(LEASES)
                .unwrap_or_default()
                .trim_start_matches('/');
            match method {
                "GET" => match store.leases.get(name) {
                    Some(lease) => (200, lease.clone()),
                    None => status(404, "NotFound"),
                },
                "POST" => {
                    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                    if store.leases.contains_key(&name) {
                        return status(409, "AlreadyExists");
                    }
                    let mut lease = body;
                    lease["spec"] = json!({});
                    store.put(&name, lease);
                    (201, store.leases[&name].clone())
                }
                "PATCH" => {
                    let Some(mut lease) = store.leases.get(name).cloned() else {
                        return status(404, "NotFound");
                    };
                    let new_holder = body["spec"].get("holderIdentity").cloned();
                    if let (true, Some(Value::String(new))) = (apply, &new_holder) {
                        let held = lease["spec"]["holderIdentity"].as_str();
                        let owner = store.holder_manager.get(name);
                        if held.is_some_and(|h| h != new) && owner.is_some_and(|o| *o != manager) {
                            return status(409, "Conflict");
                        }
                    }
                    for (field, value) in body["spec"].as_object().cloned().unwrap_or_default() {
                        if value.is_null() {
                            lease["spec"].as_object_mut().unwrap().remove(&field);
                        } else {
                            lease["spec"][&field] = value;
                        }
                    }
                    if new_holder.is_some() {
                        store.holder_manager.insert(name.to_owned(), manager);
                    }
                    store.put(name, lease);
                    (200, store.leases[name].clone())
                }
                _ => status(405, "MethodNotAllowed"),
            }
        }

        fn lease(&self) -> Value {
            self.0.lock().unwrap().leases["ringlb-operator"].clone()
        }

        fn holder(&self) -> Option<String> {
            let store = self.0.lock().unwrap();
            let lease = store.leases.get("ringlb-operator")?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
        }

        /// A lease held by `holder`, renewed `ago` ago, for 2 s, as another
        /// manager left it.
        fn held_by(&self, holder: &str, ago: Duration) {
            let renewed = k8s_openapi::jiff::Timestamp::now() - ago;
            let mut store = self.0.lock().unwrap();
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "ringlb-operator", "namespace": "default"},
                "spec": {
                    "holderIdentity": holder,
                    "leaseDurationSeconds": 2,
                    "acquireTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "leaseTransitions": 1,
                },
            });
            store.put("ringlb-operator", lease);
            store
                .holder_manager
                .insert("ringlb-operator".into(), format!("manager-of-{holder}"));
        }
    }

    impl Store {
        fn put(&mut self, name: &str, mut lease: Value) {
            self.version += 1;
            lease["metadata"]["resourceVersion"] = json!(self.version.to_string());
            self.leases.insert(name.to_owned(), lease);
        }
    }

    fn status(code: u16, reason: &str) -> (u16, Value) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": reason, "reason": reason, "code": code,
        });
        (code, body)
    }

    /// A 2 s lease, renewed 1 s before it ends.
    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings {
            duration: Duration::from_secs(2),
            grace: Duration::from_secs(1),
            ..LeaseSettings::new("ringlb-operator", "default", identity, Duration::ZERO)
        }
    }

    struct Candidate {
        leadership: Leadership,
        metrics: Arc<Metrics>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    fn candidate(api: &LeaseApi, identity: &str) -> Candidate {
        candidate_with(api, settings(identity))
    }

    fn candidate_with(api: &LeaseApi, settings: LeaseSettings) -> Candidate {
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (leadership, task) = campaign(api.client(), settings, metrics.clone(), async {
            let _ = stopped.await;
        });
        Candidate {
            leadership,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    impl Candidate {
        async fn step_down(&mut self) {
            let _ = self.stop.take().unwrap().send(());
            (&mut self.task).await.unwrap();
        }
    }

    async fn until(what: &str, limit: Duration, check: impl Fn() -> bool) -> Duration {
        let started = Instant::now();
        while !check() {
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn one_of_two_acquires_renews_and_the_other_waits() {
        let api = LeaseApi::default();
        let a = candidate(&api, "a");
        let b = candidate(&api, "b");
        until("a leader", Duration::from_secs(5), || {
            a.leadership.is_leader() || b.leadership.is_leader()
        })
        .await;
        let (leader, standby) = if a.leadership.is_leader() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let holder = api.holder().unwrap();
        let first_renewal = api.lease()["spec"]["renewTime"].clone();
        // Longer than the lease: it lasts only because it is renewed. (Right after a
        // renewal the leader may wait for its next read of the lease to be sure again:
        // on a loaded machine, give it that read.)
        tokio::time::sleep(Duration::from_secs(4)).await;
        until(
            "the leader to confirm its renewal",
            Duration::from_secs(2),
            || leader.leadership.is_leader(),
        )
        .await;
        assert!(!standby.leadership.is_leader());
        assert_eq!(api.holder().unwrap(), holder, "the same holder");
        assert_ne!(api.lease()["spec"]["renewTime"], first_renewal, "renewed");
        assert_eq!(leader.metrics.leader.get(), 1);
        assert_eq!(leader.metrics.leader_transitions.get(), 1);
        assert_eq!(standby.metrics.leader.get(), 0);
    }

    /// client-go's RenewDeadline: a leader that cannot renew stops acting before its
    /// lease may expire, while its renewal is still hanging.
    #[tokio::test]
    async fn a_leader_whose_renewals_hang_stops_before_its_lease_expires() {
        let api = LeaseApi::default();
        let a = candidate(&api, "a");
        until("a leads", Duration::from_secs(5), || {
            a.leadership.is_leader()
        })
        .await;
        api.0.lock().unwrap().hang_patches = true;
        until("a stops", Duration::from_secs(5), || {
            !a.leadership.is_leader()
        })
        .await;
        let renewed = api.lease()["spec"]["renewTime"]
            .as_str()
            .unwrap()
            .to_owned();
        let renewed: k8s_openapi::jiff::Timestamp = renewed.parse().unwrap();
        let expires = renewed + Duration::from_secs(2);
        assert!(
            k8s_openapi::jiff::Timestamp::now() < expires,
            "a stopped before its lease could be taken ({renewed} + 2 s)"
        );
    }

    #[tokio::test]
    async fn an_expired_lease_of_a_dead_leader_is_taken_over() {
        let api = LeaseApi::default();
        api.held_by("dead", Duration::from_secs(60));
        let a = candidate(&api, "a");
        until("a takes over", Duration::from_secs(5), || {
            a.leadership.is_leader()
        })
        .await;
        assert_eq!(api.holder().as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn a_live_lease_of_another_is_respected_until_it_expires() {
        let api = LeaseApi::default();
        api.held_by("other", Duration::ZERO);
        let a = candidate(&api, "a");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!a.leadership.is_leader(), "the lease still runs for 1 s");
        // "other" stops renewing: within the lease duration (and a little), a leads.
        until("a takes over", Duration::from_secs(5), || {
            a.leadership.is_leader()
        })
        .await;
    }

    #[tokio::test]
    async fn a_leader_whose_lease_was_taken_stops_leading() {
        let api = LeaseApi::default();
        let a = candidate(&api, "a");
        until("a leads", Duration::from_secs(5), || {
            a.leadership.is_leader()
        })
        .await;
        // Another writer takes the lease (as after a partition): a finds out at its
        // next renewal, within the lease duration.
        api.held_by("intruder", Duration::ZERO);
        until("a stops leading", Duration::from_secs(5), || {
            !a.leadership.is_leader()
        })
        .await;
        assert_eq!(a.metrics.leader.get(), 0);
        assert_eq!(a.metrics.leader_transitions.get(), 2);
    }

    /// A rollout: the old leader stops, the new pod starts. The lease is released, so
    /// the new pod leads at once instead of waiting out the old one's lease (here
    /// 20 s, renewed every 10 s: at least 10 s left at any moment).
    #[tokio::test]
    async fn a_leader_that_steps_down_releases_the_lease_for_its_successor() {
        let api = LeaseApi::default();
        let long = |identity| LeaseSettings {
            duration: Duration::from_secs(20),
            grace: Duration::from_secs(10),
            ..LeaseSettings::new("ringlb-operator", "default", identity, Duration::ZERO)
        };
        let mut a = candidate_with(&api, long("a"));
        until("a leads", Duration::from_secs(5), || {
            a.leadership.is_leader()
        })
        .await;
        a.step_down().await;
        assert!(!a.leadership.is_leader());
        assert_eq!(api.holder(), None, "released");
        let b = candidate_with(&api, long("b"));
        let waited = until("b leads", Duration::from_secs(30), || {
            b.leadership.is_leader()
        })
        .await;
        assert!(
            waited < Duration::from_secs(5),
            "b waited {waited:?}: the lease was not released"
        );
    }
}
