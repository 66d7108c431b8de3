//! The operator's pod API: replicas as Kubernetes pods, one [`KubeRuntime`] per
//! `ServerPool`.
//!
//! A replica's pod is named after its logical name in DNS-1123 form
//! (`emergency_58` → `emergency-58`); the logical name itself is kept in the label
//! `ringlb.dev/member` and in `SERVER_ID`. Every pod carries the label
//! `ringlb.dev/pool` and an ownerReference to its pool, so that deleting the pool
//! deletes its pods.
//!
//! The reconciler reads the pods from its watch's store ([`replica_pod`] says what
//! it needs of each) and uses [`KubeRuntime::create`] and [`KubeRuntime::delete`];
//! it never waits for a pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ::kube::api::{DeleteParams, PostParams};
use ::kube::{Api, Client};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, ContainerStatus, EnvVar, GRPCAction, HTTPGetAction,
    Pod, PodCondition, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecurityContext, TopologySpreadConstraint,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::admin_secret;
use super::crd::ReplicaTemplate;
use super::pod_slots::{NamingError, pod_name};
use crate::pool::HealthCheck;
use crate::replica_name::ReplicaName;

/// Label: the pool a pod belongs to.
pub const POOL_LABEL: &str = "ringlb.dev/pool";
/// Label: the logical replica name of a pod (what `/rep` lists).
pub const MEMBER_LABEL: &str = "ringlb.dev/member";
/// Label: the hash of the pod template a pod was made from ([`PodTemplate::hash`]):
/// a pod whose hash is not the pool's current one is rolled to the new template.
pub const TEMPLATE_LABEL: &str = "ringlb.dev/template";
/// Grace period of a failed replica's pod.
pub const FAILED_POD_GRACE_SECONDS: u32 = 5;
/// The name of the replica container in every pod.
pub const CONTAINER: &str = "replica";

/// A pod's lifecycle as far as the pool cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not yet running (scheduling, pulling the image), or phase unknown.
    Pending,
    Running,
    /// The container exited (phase Failed or Succeeded): the replica is gone.
    Exited,
    /// Being deleted: its name is still taken until it is gone.
    Terminating,
}

/// One pod of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPod {
    /// The logical name from the member label; `None` if the label is missing or
    /// not a replica name (such a pod is deleted as an extra).
    pub name: Option<ReplicaName>,
    pub pod: String,
    pub uid: String,
    pub ip: Option<IpAddr>,
    /// When it was asked to stop (its `deletionTimestamp`), if it is terminating.
    pub deleting_since: Option<Timestamp>,
    /// The port its container declares: where its heartbeats go (a pod made before
    /// a `spec.port` change still listens on the old one).
    pub port: Option<u16>,
    pub state: PodState,
    /// Why its container is not running, as the kubelet says (`ImagePullBackOff`,
    /// `Error, exit code 1`): what a Degraded condition quotes.
    pub container_reason: Option<String>,
    /// The hash of the template it was made from (`None`: made before templates
    /// were hashed, so it is rolled like an outdated one).
    pub template: Option<String>,
    /// The kubelet's word on its readiness probe ([`pod_ready`]): the proxies take a
    /// member out while it says `false`, so a rollout hands over only once it agrees.
    pub kubelet_ready: Option<bool>,
    /// When the pod was created, when its container last started running, and since
    /// when the kubelet has said Ready: what an operator that did not watch it start
    /// (a new leader) judges it from.
    pub created_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    /// When its container exited, if it did.
    pub finished_at: Option<Timestamp>,
    /// It was Ready once and is no more: its Ready condition turned False well after
    /// its container started (one never ready has had it False since its start).
    pub was_ready: bool,
    pub ready_since: Option<Timestamp>,
    /// Why it cannot start, if the kubelet or the scheduler says it never will by
    /// itself (an image that cannot be pulled, no node that fits).
    pub start_failure: Option<StartFailure>,
}

/// A pod that does not get to run, and why, in the words of the kubelet or the
/// scheduler. Retrying the same pod does not help: a person must act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartFailure {
    /// The reason as Kubernetes gives it (`ImagePullBackOff`, `Unschedulable`): also
    /// the reason of the pool's Degraded condition.
    pub reason: &'static str,
    /// What the kubelet or the scheduler said about it.
    pub message: String,
}

/// Waiting reasons of a container that will not start without a change to its pod
/// or the cluster (kubelet's `images` and `kuberuntime` packages).
const NEVER_STARTS: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The kubelet's readiness probe of a replica: the check its heartbeats make, on its
/// port (Kubernetes' own gRPC probe, `grpc.health.v1.Health/Check`, for a gRPC one).
fn readiness_probe(check: HealthCheck, port: i32) -> Probe {
    let probe = Probe {
        period_seconds: Some(2),
        ..Probe::default()
    };
    match check {
        HealthCheck::Http => Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/heartbeat".to_owned()),
                port: IntOrString::Int(port),
                ..HTTPGetAction::default()
            }),
            ..probe
        },
        HealthCheck::Grpc => Probe {
            grpc: Some(GRPCAction {
                port,
                service: None,
            }),
            ..probe
        },
    }
}

/// What a pool's pods look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodTemplate {
    pub image: String,
    pub port: u16,
    /// `spec.template`: merged over the defaults of [`KubeRuntime::pod_manifest`].
    pub template: ReplicaTemplate,
    /// `spec.heartbeat.check`: what the kubelet's readiness probe asks, as the
    /// operator's heartbeats do (a replica that speaks only gRPC has no `/heartbeat`).
    pub check: HealthCheck,
}

impl PodTemplate {
    /// A short, stable digest of everything a pod is made from: a pod labelled
    /// with another one is outdated. (Our own MurmurHash3, so that the label does
    /// not change with the Rust release that built the operator.) A pool without
    /// `spec.template` keeps the digest it had before templates existed, so that an
    /// upgrade of the operator rolls no pod.
    pub fn hash(&self) -> String {
        let mut text = format!("{}\0{}", self.image, self.port);
        if self.template != ReplicaTemplate::default() {
            text.push('\0');
            // Field order is the struct's and maps are sorted: the same template
            // always gives the same text.
            text.push_str(&serde_json::to_string(&self.template).unwrap_or_default());
        }
        // Likewise the check: only a gRPC one, newer than the digest, is in it.
        if self.check != HealthCheck::Http {
            text.push_str("\0check=grpc");
        }
        let (high, _) = crate::ring::murmur3_x64_128(text.as_bytes(), 0);
        format!("{:010x}", high >> 24)
    }
}

/// The pods of one `ServerPool`.
#[derive(Clone)]
pub struct KubeRuntime {
    pods: Api<Pod>,
    budgets: Api<PodDisruptionBudget>,
    secrets: Api<Secret>,
    pool: String,
    owner: OwnerReference,
    template: PodTemplate,
}

impl KubeRuntime {
    /// `owner` is the pool's controller ownerReference (`controller: true`).
    pub fn new(
        client: Client,
        namespace: &str,
        pool: &str,
        owner: OwnerReference,
        template: PodTemplate,
    ) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), namespace),
            budgets: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            pool: pool.to_owned(),
            owner,
            template,
        }
    }

    pub fn template(&self) -> &PodTemplate {
        &self.template
    }

    /// The pod of replica `name`, named `pod`: pure, so that tests can compare it
    /// whole. `spec.template` is merged over the defaults here: each field it sets
    /// replaces the default whole; its labels and env add to the operator's, which win.
    pub fn pod_manifest(&self, name: &ReplicaName, pod: &str) -> Result<Pod, NamingError> {
        pod_name(name)?;
        let pod = pod.to_owned();
        let port = i32::from(self.template.port);
        let user = &self.template.template;
        let user_meta = user.metadata.clone().unwrap_or_default();
        let mut labels = user_meta.labels.unwrap_or_default();
        labels.extend([
            (
                "app.kubernetes.io/name".to_owned(),
                "ringlb-replica".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "ringlb".to_owned(),
            ),
            (POOL_LABEL.to_owned(), self.pool.clone()),
            (MEMBER_LABEL.to_owned(), name.to_string()),
            (TEMPLATE_LABEL.to_owned(), self.template.hash()),
        ]);
        let env_var = |name: &str, value: String| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            ..EnvVar::default()
        };
        let mut env = vec![
            env_var("SERVER_ID", name.to_string()),
            env_var("PORT", self.template.port.to_string()),
            // IPv4, IPv6 and dual-stack clusters alike.
            env_var("REPLICA_HOST", "::".to_owned()),
        ];
        // (The schema refuses these three in spec.template.env; should one get past
        // it, the replica's own name and port still win.)
        let ours = |e: &EnvVar| env.iter().any(|o| o.name == e.name);
        let extra: Vec<EnvVar> = user
            .env
            .iter()
            .flatten()
            .filter(|e| !ours(e))
            .cloned()
            .collect();
        env.extend(extra);
        let quantity = |q: &str| Quantity(q.to_owned());
        // Replicas spread over nodes unless the template says otherwise: one node's
        // loss takes as few replicas as the scheduler could manage.
        let spread = TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(POOL_LABEL.to_owned(), self.pool.clone())])),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        };
        Ok(Pod {
            metadata: ObjectMeta {
                name: Some(pod),
                labels: Some(labels),
                annotations: user_meta.annotations,
                owner_references: Some(vec![self.owner.clone()]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                // ringlb is the supervisor: an exited replica is replaced, as locally.
                restart_policy: Some("Never".to_owned()),
                termination_grace_period_seconds: Some(
                    user.termination_grace_period_seconds.unwrap_or(10),
                ),
                enable_service_links: Some(false),
                automount_service_account_token: Some(false),
                security_context: Some(user.security_context.clone().unwrap_or_else(|| {
                    PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }
                })),
                node_selector: user.node_selector.clone(),
                tolerations: user.tolerations.clone(),
                affinity: user.affinity.clone(),
                topology_spread_constraints: Some(
                    user.topology_spread_constraints
                        .clone()
                        .unwrap_or_else(|| vec![spread]),
                ),
                image_pull_secrets: user.image_pull_secrets.clone(),
                priority_class_name: user.priority_class_name.clone(),
                containers: vec![Container {
                    name: CONTAINER.to_owned(),
                    image: Some(self.template.image.clone()),
                    image_pull_policy: Some("IfNotPresent".to_owned()),
                    env: Some(env),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".to_owned()),
                        container_port: port,
                        ..ContainerPort::default()
                    }]),
                    readiness_probe: Some(readiness_probe(self.template.check, port)),
                    resources: Some(user.resources.clone().unwrap_or_else(|| {
                        ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_owned(), quantity("10m")),
                                ("memory".to_owned(), quantity("16Mi")),
                            ])),
                            limits: Some(BTreeMap::from([("memory".to_owned(), quantity("64Mi"))])),
                            ..ResourceRequirements::default()
                        }
                    })),
                    security_context: Some(user.container_security_context.clone().unwrap_or_else(
                        || SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".to_owned()]),
                                ..Capabilities::default()
                            }),
                            ..SecurityContext::default()
                        },
                    )),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        })
    }

    /// The pool's PodDisruptionBudget, as [`disruption_budget`] makes it.
    pub fn disruption_budget(&self) -> PodDisruptionBudget {
        disruption_budget(&self.pool, &self.owner)
    }

    /// Writes the pool's PodDisruptionBudget (server-side apply: created if missing).
    pub async fn apply_disruption_budget(&self, manager: &str) -> Result<(), ::kube::Error> {
        let budget = self.disruption_budget();
        let mut body = serde_json::to_value(&budget).unwrap_or_default();
        body["apiVersion"] = "policy/v1".into();
        body["kind"] = "PodDisruptionBudget".into();
        self.budgets
            .patch(
                &self.pool,
                &::kube::api::PatchParams::apply(manager).force(),
                &::kube::api::Patch::Apply(body),
            )
            .await?;
        Ok(())
    }

    /// Creates the pool's admin token Secret unless one exists (see [`admin_secret`]).
    pub async fn ensure_admin_secret(&self) -> Result<admin_secret::Ensured, ::kube::Error> {
        admin_secret::ensure(&self.secrets, &self.pool, &self.owner).await
    }

    /// Creates pod `pod` of replica `name`.
    pub async fn create(&self, name: &ReplicaName, pod: &str) -> Result<Pod, CreateError> {
        let pod = self.pod_manifest(name, pod)?;
        Ok(self.pods.create(&PostParams::default(), &pod).await?)
    }

    /// Whether pod `pod` is this pool's (its label and its controller owner): tells
    /// a create refused with 409 because this pool made the pod already (the watch
    /// has not shown it yet) from one that another pool or someone else holds.
    pub async fn owns(&self, pod: &str) -> Result<bool, ::kube::Error> {
        let Some(found) = self.pods.get_opt(pod).await? else {
            return Ok(false);
        };
        let labelled = pool_label(&found) == Some(self.pool.as_str());
        let owned = found
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == self.owner.uid);
        Ok(labelled && owned)
    }

    /// Deletes pod `pod` gracefully; one already gone is not an error.
    pub async fn delete(&self, pod: &str) -> Result<(), ::kube::Error> {
        self.delete_with(pod, &DeleteParams::default()).await
    }

    /// Deletes the pod of a replica that failed with a short grace period: its name
    /// is not reused (the replacement has another), so nothing waits for it, and the
    /// kubelet still stops its container in order (a force delete would leave a
    /// frozen process running on a node the API server no longer knows about).
    pub async fn delete_failed(&self, pod: &str) -> Result<(), ::kube::Error> {
        self.delete_with(
            pod,
            &DeleteParams::default().grace_period(FAILED_POD_GRACE_SECONDS),
        )
        .await
    }

    async fn delete_with(&self, pod: &str, params: &DeleteParams) -> Result<(), ::kube::Error> {
        match self.pods.delete(pod, params).await {
            Ok(_) => Ok(()),
            Err(error) if is_status(&error, 404) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Naming(#[from] NamingError),
    #[error(transparent)]
    Api(#[from] ::kube::Error),
}

/// The metadata of an object the operator makes for pool `pool` (its budget, its admin
/// Secret): named `name`, labelled with the pool, owned by it so that it goes with it.
pub fn owned_metadata(name: String, pool: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(BTreeMap::from([
            (POOL_LABEL.to_owned(), pool.to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "ringlb".to_owned(),
            ),
        ])),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The PodDisruptionBudget of pool `pool`, named after it and owned by it (it goes
/// with the pool): a node drain evicts at most one of its replicas at a time, as
/// CloudNativePG's budgets do for its instances. `maxUnavailable: 1` holds whatever
/// `replicas` is, so a scale needs no update, and a pool of one can still be drained.
/// (The operator deletes pods itself, which no budget holds back.)
pub fn disruption_budget(pool: &str, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owned_metadata(pool.to_owned(), pool, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(POOL_LABEL.to_owned(), pool.to_owned())])),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Whether `found` is pool `pool`'s budget as [`disruption_budget`] makes it (its
/// spec, and owned by the pool): a pass rewrites it otherwise.
pub fn is_current_budget(found: &PodDisruptionBudget, want: &PodDisruptionBudget) -> bool {
    let spec = |b: &PodDisruptionBudget| {
        b.spec.as_ref().map(|s| {
            (
                s.max_unavailable.clone(),
                s.min_available.clone(),
                s.selector.clone(),
            )
        })
    };
    let owner = want
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| &o.uid)
        .next();
    spec(found) == spec(want)
        && found
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == owner)
}

/// True when the API server answered with HTTP status `code`.
pub fn is_status(error: &::kube::Error, code: u16) -> bool {
    matches!(error, ::kube::Error::Api(status) if status.code == code)
}

/// The pool a pod is labelled with (`ringlb.dev/pool`): which pool's it is, for the
/// reconciler, the heartbeats and the conflict check alike.
pub fn pool_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(POOL_LABEL)
        .map(String::as_str)
}

/// What the pool needs to know about a pod.
pub fn replica_pod(pod: &Pod) -> ReplicaPod {
    let name = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MEMBER_LABEL))
        .and_then(|n| ReplicaName::parse(n).ok());
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let state = if pod.metadata.deletion_timestamp.is_some() {
        PodState::Terminating
    } else {
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Running") => PodState::Running,
            Some("Failed" | "Succeeded") => PodState::Exited,
            _ => PodState::Pending,
        }
    };
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.ports.as_ref()?.first())
        .and_then(|p| u16::try_from(p.container_port).ok());
    ReplicaPod {
        name,
        pod: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        ip,
        port,
        state,
        deleting_since: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        container_reason: container_reason(pod),
        template: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_LABEL))
            .cloned(),
        kubelet_ready: pod_ready(pod),
        created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        started_at: replica_container(pod)
            .and_then(|c| {
                let state = c.state.as_ref()?;
                match (&state.running, &state.terminated) {
                    (Some(running), _) => running.started_at.as_ref(),
                    (None, Some(terminated)) => terminated.started_at.as_ref(),
                    (None, None) => None,
                }
            })
            .map(|t| t.0),
        finished_at: replica_container(pod)
            .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
            .map(|t| t.0),
        ready_since: pod_condition(pod, "Ready")
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0),
        start_failure: start_failure(pod),
        was_ready: was_ready(pod),
    }
}

/// See [`ReplicaPod::was_ready`].
fn was_ready(pod: &Pod) -> bool {
    let started = replica_container(pod)
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0);
    let turned_false = pod_condition(pod, "Ready")
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    match (started, turned_false) {
        (Some(started), Some(turned)) => {
            turned.duration_since(started) > k8s_openapi::jiff::SignedDuration::from_secs(1)
        }
        _ => false,
    }
}

/// Why pod `pod` cannot start, if it is a reason that lasts (see [`StartFailure`]).
pub fn start_failure(pod: &Pod) -> Option<StartFailure> {
    if let Some(waiting) = replica_container(pod)
        .and_then(|c| c.state.as_ref()?.waiting.as_ref())
        .filter(|w| w.reason.is_some())
    {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        let reason = NEVER_STARTS.iter().find(|r| **r == reason)?;
        return Some(StartFailure {
            reason,
            message: waiting.message.clone().unwrap_or_default(),
        });
    }
    let scheduled = pod_condition(pod, "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable")).then(
        || StartFailure {
            reason: "Unschedulable",
            message: scheduled.message.clone().unwrap_or_default(),
        },
    )
}

fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn replica_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)
}

/// The kubelet's word: `Some(true)` when the pod's `Ready` condition is `True`,
/// `None` when it has none yet.
pub fn pod_ready(pod: &Pod) -> Option<bool> {
    pod_condition(pod, "Ready").map(|c| c.status == "True")
}

/// The waiting or terminated reason of the replica container, if it is not running.
fn container_reason(pod: &Pod) -> Option<String> {
    let container = replica_container(pod)?;
    let state = container.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        return waiting.reason.clone();
    }
    let terminated = state.terminated.as_ref()?;
    Some(format!(
        "{}, exit code {}",
        terminated.reason.as_deref().unwrap_or("terminated"),
        terminated.exit_code
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// (A client needs a runtime to exist, not to be used: `pod_manifest` is pure.)
    fn runtime(template: ReplicaTemplate) -> KubeRuntime {
        KubeRuntime::new(
            crate::operator::fixtures::FakeApiServer::default().client(),
            "default",
            "demo",
            OwnerReference::default(),
            PodTemplate {
                image: "ringlb-replica:dev".into(),
                port: 5000,
                template,
                ..PodTemplate::default()
            },
        )
    }

    fn manifest(template: ReplicaTemplate) -> serde_json::Value {
        let name = ReplicaName::parse("Server1").unwrap();
        serde_json::to_value(runtime(template).pod_manifest(&name, "server1").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn without_a_template_pods_spread_over_nodes_and_keep_their_hash() {
        let pod = manifest(ReplicaTemplate::default());
        assert_eq!(
            pod["spec"]["topologySpreadConstraints"],
            json!([{
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"ringlb.dev/pool": "demo"}},
            }])
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "64Mi"
        );
        assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 65532);
        // The hash of image and port alone, as before templates: an operator upgrade
        // rolls no pod of a pool that sets none.
        let text = "ringlb-replica:dev\u{0}5000";
        let (high, _) = crate::ring::murmur3_x64_128(text.as_bytes(), 0);
        assert_eq!(
            pod["metadata"]["labels"][TEMPLATE_LABEL],
            format!("{:010x}", high >> 24)
        );
    }

    #[tokio::test]
    async fn a_grpc_check_makes_a_grpc_readiness_probe_and_a_new_template() {
        let http = manifest(ReplicaTemplate::default());
        assert_eq!(
            http["spec"]["containers"][0]["readinessProbe"]["httpGet"],
            json!({"path": "/heartbeat", "port": 5000})
        );
        let mut template = runtime(ReplicaTemplate::default()).template().clone();
        template.check = HealthCheck::Grpc;
        let grpc = KubeRuntime::new(
            crate::operator::fixtures::FakeApiServer::default().client(),
            "default",
            "demo",
            OwnerReference::default(),
            template,
        );
        let name = ReplicaName::parse("Server1").unwrap();
        let grpc = serde_json::to_value(grpc.pod_manifest(&name, "server1").unwrap()).unwrap();
        let probe = &grpc["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["grpc"], json!({"port": 5000}));
        assert_eq!(probe["httpGet"], json!(null));
        assert_eq!(probe["periodSeconds"], 2);
        // Another probe is another pod: a change of check rolls the pods.
        assert_ne!(
            grpc["metadata"]["labels"][TEMPLATE_LABEL],
            http["metadata"]["labels"][TEMPLATE_LABEL]
        );
    }

    #[tokio::test]
    async fn a_template_is_merged_over_the_defaults_and_the_operators_own_fields_win() {
        let template: ReplicaTemplate = serde_json::from_value(json!({
            "metadata": {
                "labels": {"team": "web", "ringlb.dev/pool": "not-mine"},
                "annotations": {"prometheus.io/scrape": "true"},
            },
            "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "topologySpreadConstraints": [{
                "maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
            }],
            "imagePullSecrets": [{"name": "registry"}],
            "priorityClassName": "high",
            "securityContext": {"runAsUser": 1000},
            "env": [{"name": "LOG", "value": "debug"}, {"name": "SERVER_ID", "value": "x"}],
            "terminationGracePeriodSeconds": 30,
        }))
        .unwrap();
        let pod = manifest(template.clone());
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["team"], "web");
        assert_eq!(labels["ringlb.dev/pool"], "demo");
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["nodeSelector"], json!({"disk": "ssd"}));
        assert_eq!(spec["tolerations"][0]["key"], "dedicated");
        assert_eq!(spec["topologySpreadConstraints"][0]["maxSkew"], 2);
        assert_eq!(
            spec["topologySpreadConstraints"].as_array().unwrap().len(),
            1
        );
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
        assert_eq!(spec["priorityClassName"], "high");
        assert_eq!(spec["securityContext"], json!({"runAsUser": 1000}));
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        let container = &spec["containers"][0];
        assert_eq!(
            container["resources"],
            json!({"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}})
        );
        let env: Vec<(&str, &str)> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            env,
            [
                ("SERVER_ID", "Server1"),
                ("PORT", "5000"),
                ("REPLICA_HOST", "::"),
                ("LOG", "debug")
            ]
        );
        // A template is part of what a pod is made from.
        assert_ne!(
            labels[TEMPLATE_LABEL],
            manifest(ReplicaTemplate::default())["metadata"]["labels"][TEMPLATE_LABEL]
        );
    }
}
