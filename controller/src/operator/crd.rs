//! The `ServerPool` custom resource: what a user writes (spec) and what the
//! reconciler reports (status). `ringlb crd` prints the CustomResourceDefinition
//! generated from these types; `crds/serverpool.yaml` is that output, and a test
//! fails when they differ.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pool::{HealthCheck, HealthSettings};
use crate::publish::{BalanceFactor, UpstreamProtocol};
use crate::replica_name::MAX_NAME_LEN;
use crate::ring::{Algorithm, HashFn, MAX_WEIGHT, Preset, RingConfig};

/// The replica image a pool runs unless its spec names another.
pub const DEFAULT_REPLICA_IMAGE: &str = "ringlb-replica:dev";
/// The port replicas listen on unless the spec names another.
pub const DEFAULT_REPLICA_PORT: u16 = 5000;

// Bounds of the schema. The API server refuses a pool outside them, so every pool that
// a watcher lists deserializes into the Rust types (a `replicas` above `u32::MAX` once
// broke the LIST of every pool of the namespace) and stays within what the reconciler can do.

/// Most replicas a pool may ask for (`spec.replicas`, `spec.hostnames`).
pub const MAX_POOL_REPLICAS: u32 = 1000;
/// Bounds of `spec.heartbeat.intervalMs`: 100 ms to 1 hour.
const MIN_INTERVAL_MS: u64 = 100;
const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Bounds of `spec.heartbeat.timeoutMs`: 10 ms to 1 minute.
const MIN_TIMEOUT_MS: u64 = 10;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Most consecutive failures `spec.heartbeat.failureThreshold` may ask for.
const MAX_FAILURE_THRESHOLD: u32 = 100;
/// Longest `spec.heartbeat.startupGraceMs`: 1 hour.
const MAX_STARTUP_GRACE_MS: u64 = 3_600_000;
/// `RingConfig::validate`'s largest table (`ring::config::MAX_SLOTS`, not exported; a test
/// checks that both agree).
const MAX_SLOTS: u32 = 1 << 24;
/// `RingConfig::validate`'s most virtual nodes per member (`ring::config::MAX_VNODES`).
const MAX_VNODES: u32 = 10_000;
/// A replica name (`ReplicaName::parse`) that is also a pod name (`pod_slots::pod_name`):
/// a letter or digit, then letters, digits, `_` and `-`, ending with a letter or digit.
/// CEL: no hostname differs from a generated name (`Server<k>`, `emergency_<n>`) only
/// in case or `-`/`_`, which would give two replicas one pod name.
const HOSTNAME_SHADOW_RULE: &str = "self.all(h, \
    !h.lowerAscii().replace('_', '-').matches('^(server[0-9]+|emergency-[0-9]+)$') \
    || h.matches('^(Server[0-9]+|emergency_[0-9]+)$'))";
const HOSTNAME_SHADOW_MESSAGE: &str = "a hostname that differs from a generated name \
    (Server<k>, emergency_<n>) only in case or '-'/'_' would share its pod name: write it \
    exactly as generated (Server1) or choose another";
const REPLICA_NAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$";

/// A pool of ringlb replicas: ringlb keeps `replicas` pods alive, replaces those
/// whose heartbeats fail with `emergency-<n>` pods, and routes through a
/// consistent-hash ring of the ready ones.
// Two printer columns are integers: clippy reads the repeated `type_` as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ringlb.dev",
    version = "v1alpha1",
    kind = "ServerPool",
    plural = "serverpools",
    shortname = "sp",
    namespaced,
    status = "ServerPoolStatus",
    derive = "PartialEq",
    doc = "A pool of ringlb replicas kept alive by the ringlb operator",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Replicas the pool keeps alive"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Replicas whose heartbeats succeed (in the ring)"
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Replicas served by a pod of the current image and port"
    ),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status",
        description = "Enough replicas ready to serve (all but one)"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "Why the pool cannot be as its spec says (AsExpected when it can)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolSpec {
    /// Number of replicas to keep alive (at most 1000).
    #[schemars(range(min = 0, max = MAX_POOL_REPLICAS), extend("format" = "int32"))]
    pub replicas: u32,
    /// Names of the first replicas; the rest are Server1, Server2, … (the lowest
    /// numbers not taken). Names are 1–63 characters of [A-Za-z0-9_-], starting and
    /// (so that they make valid pod names) ending with a letter or digit; no name twice.
    /// Names past the first `replicas` wait for the pool to grow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // A set: the API server refuses a name given twice, without the O(n²) cost of a CEL
    // rule over 1000 items. Two names that give the same pod name (`Web_1`, `web-1`)
    // are still refused at run time only (Degraded), as a CEL rule for that would be as costly.
    // A name that would share its pod name with a generated one (`server1` beside the
    // default `Server1`, `emergency-3` beside a replacement's `emergency_3`) is refused
    // at admission: one rule per item, linear.
    #[schemars(
        length(max = MAX_POOL_REPLICAS),
        inner(length(min = 1, max = MAX_NAME_LEN), pattern(REPLICA_NAME_PATTERN)),
        extend(
            "x-kubernetes-list-type" = "set",
            "x-kubernetes-validations" = [{
                "rule": HOSTNAME_SHADOW_RULE,
                "message": HOSTNAME_SHADOW_MESSAGE,
            }]
        )
    )]
    pub hostnames: Vec<String>,
    /// Container image of the replicas (serves /home and /heartbeat on `port`).
    #[serde(default = "default_image")]
    pub image: String,
    /// Port the replicas listen on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65_535), extend("format" = "int32"))]
    pub port: u16,
    /// Ring settings of the proxy; unset: the default preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing: Option<HashingSpec>,
    /// Ring weights (1 to 256) by replica name (a hostname or a generated `Server<k>`);
    /// unlisted replicas weigh 1, and a replacement takes the weight of the replica it
    /// replaces. A replica's share of the keys is proportional to its weight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = weight_values)]
    pub weights: BTreeMap<String, u32>,
    /// Heartbeat settings; unset: every second, 500 ms timeout, 3 failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSpec>,
    /// What the proxies speak to the replicas: `http1`, `h2c` (gRPC servers) or `auto`
    /// (the client's) [default: http1]. `heartbeat.check: grpc` goes with a gRPC server
    /// that has no `/heartbeat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
    /// Where and how the replica pods run, merged over the operator's defaults; a
    /// change rolls the pods one at a time, as a new image does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ReplicaTemplate>,
}

/// The part of a replica pod a pool may set, in the manner of the Prometheus
/// operator's and CloudNativePG's pod templates. The types (and so the schema) are
/// Kubernetes' own; the API server checks the values when it admits the pod (a
/// refusal is `Degraded`, reason `FailedCreate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.env) || self.env.all(e, !(e.name in ['SERVER_ID', 'PORT', 'REPLICA_HOST']))",
    "message": "env may not set SERVER_ID, PORT or REPLICA_HOST: the operator sets them for each replica"
}]))]
pub struct ReplicaTemplate {
    /// Labels and annotations of the pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// Of the replica container [default: requests cpu 10m, memory 16Mi; limit memory 64Mi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// [default: spread over nodes (`kubernetes.io/hostname`, maxSkew 1,
    /// ScheduleAnyway)].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints:
        Option<Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Of the pod [default: non-root user and group 65532, the runtime's seccomp profile].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<k8s_openapi::api::core::v1::PodSecurityContext>,
    /// Of the replica container [default: no privilege escalation, a read-only root
    /// filesystem, every capability dropped].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<k8s_openapi::api::core::v1::SecurityContext>,
    /// More environment of the replica container (not SERVER_ID, PORT or REPLICA_HOST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<k8s_openapi::api::core::v1::EnvVar>>,
    /// [default: 10]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Labels and annotations of a pool's pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

fn default_image() -> String {
    DEFAULT_REPLICA_IMAGE.to_owned()
}

fn default_port() -> u16 {
    DEFAULT_REPLICA_PORT
}

/// The values of `spec.weights`: int32 from 1 to `MAX_WEIGHT` (schemars' `inner` bounds
/// list items, not map values).
fn weight_values(schema: &mut schemars::Schema) {
    schema.insert(
        "additionalProperties".into(),
        serde_json::json!({
            "type": "integer",
            "format": "int32",
            "minimum": 1,
            "maximum": MAX_WEIGHT,
        }),
    );
}

/// The `x-kubernetes-validations` of `spec.hashing` (see [`hashing_rules`]).
fn hashing_validations(schema: &mut schemars::Schema) {
    let rules = hashing_rules()
        .into_iter()
        .map(|(rule, message)| serde_json::json!({ "rule": rule, "message": message }))
        .collect();
    schema.insert(
        "x-kubernetes-validations".to_owned(),
        serde_json::Value::Array(rules),
    );
}

/// CEL rules (rule, message) that refuse at admission what [`ServerPoolSpec::ring_config`]
/// refuses at run time (`RingConfig::validate`), on the effective settings: the preset's
/// (default or course) where the spec leaves one unset. The schema's `minimum`/`maximum`
/// carry the upper bounds of `slots` and `vnodes`; these rules carry what depends on the
/// algorithm.
///
/// Primality of the Maglev and rank-table sizes: CEL has no loop and no primality test, so
/// the rule tries every prime up to √16777216 = 4096 (564 of them, written out) as a
/// divisor. That decides it exactly for every size the schema lets through, at a cost of
/// a few thousand CEL steps.
fn hashing_rules() -> Vec<(String, String)> {
    let course = RingConfig::preset(Preset::Course);
    let default = RingConfig::preset(Preset::Default);
    let is_course = format!("has(self.preset) && self.preset == '{}'", Preset::Course);
    let algorithm = format!(
        "(has(self.algorithm) ? self.algorithm : ({is_course} ? '{}' : '{}'))",
        course.algorithm, default.algorithm
    );
    let slots = format!(
        "(has(self.slots) ? self.slots : ({is_course} ? {} : {}))",
        course.slots, default.slots
    );
    let vnodes = format!(
        "(has(self.vnodes) ? self.vnodes : ({is_course} ? {} : {}))",
        course.vnodes, default.vnodes
    );
    let names = |algorithms: &[Algorithm]| {
        let quoted: Vec<String> = algorithms.iter().map(|a| format!("'{a}'")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let slot_tables = [Algorithm::Slot, Algorithm::Maglev, Algorithm::RankTable];
    let vnode_rings = [Algorithm::Slot, Algorithm::Point];
    let prime_tables = [Algorithm::Maglev, Algorithm::RankTable];
    let divisors: Vec<String> = primes_up_to(MAX_SLOTS.isqrt())
        .iter()
        .map(u32::to_string)
        .collect();
    let is_prime = format!(
        "self.slots >= 2 && [{}].all(p, p * p > self.slots || self.slots % p != 0)",
        divisors.join(", ")
    );
    // Unset slots: the preset's size, prime or not.
    let preset_size_is_prime = match (
        crate::ring::is_prime(course.slots),
        crate::ring::is_prime(default.slots),
    ) {
        (true, true) => "true".to_owned(),
        (false, false) => "false".to_owned(),
        (true, false) => is_course.clone(),
        (false, true) => format!("!({is_course})"),
    };
    vec![
        (
            format!("!({algorithm} in {}) || {slots} >= 1", names(&slot_tables)),
            "slots must be at least 1 for the slot, maglev and rank-table algorithms".to_owned(),
        ),
        (
            format!("!({algorithm} in {}) || {vnodes} >= 1", names(&vnode_rings)),
            "vnodes must be at least 1 for the slot and point algorithms".to_owned(),
        ),
        (
            format!(
                "{algorithm} != '{}' || {vnodes} <= {slots}",
                Algorithm::Slot
            ),
            "a slot ring cannot hold more virtual servers (vnodes) than it has slots".to_owned(),
        ),
        (
            format!(
                "!({algorithm} in {}) || (has(self.slots) ? {is_prime} : {preset_size_is_prime})",
                names(&prime_tables)
            ),
            format!(
                "slots must be prime for the maglev and rank-table algorithms, e.g. {} or {} \
                 (the course preset's {} is not)",
                crate::ring::MAGLEV_DEFAULT_SLOTS,
                crate::ring::RANK_TABLE_DEFAULT_SLOTS,
                course.slots
            ),
        ),
    ]
}

/// The primes up to `n`, in order.
fn primes_up_to(n: u32) -> Vec<u32> {
    (2..=n).filter(|&p| crate::ring::is_prime(p)).collect()
}

/// The ring: a preset, with any of its settings overridden.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = hashing_validations)]
pub struct HashingSpec {
    /// `default` (measured best) or `course` (512 slots, 9 virtual nodes, quadratic hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashFn>,
    /// Slots of the slot ring, or the (prime) Maglev and rank-table size; at most 16777216.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_SLOTS), extend("format" = "int32"))]
    pub slots: Option<u32>,
    /// Virtual nodes per replica (slot and point rings); at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_VNODES), extend("format" = "int32"))]
    pub vnodes: Option<u32>,
    /// Bounded loads: a replica takes at most this times its share of the requests in
    /// flight (1 to 100, e.g. 1.25); off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = BalanceFactor::MIN, max = BalanceFactor::MAX))]
    pub balance_factor: Option<f64>,
}

/// How replicas are heartbeaten.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.timeoutMs) || !has(self.intervalMs) || self.timeoutMs < self.intervalMs",
    "message": "timeoutMs must be less than intervalMs"
}]))]
pub struct HeartbeatSpec {
    /// Time between heartbeats, in milliseconds (100 ms to 1 hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        range(min = MIN_INTERVAL_MS, max = MAX_INTERVAL_MS),
        extend("format" = "int32")
    )]
    pub interval_ms: Option<u64>,
    /// How long one heartbeat may take, in milliseconds (10 ms to 1 minute; less than
    /// `intervalMs` when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        range(min = MIN_TIMEOUT_MS, max = MAX_TIMEOUT_MS),
        extend("format" = "int32")
    )]
    pub timeout_ms: Option<u64>,
    /// Consecutive failed heartbeats after which a replica is replaced (1 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_FAILURE_THRESHOLD), extend("format" = "int32"))]
    pub failure_threshold: Option<u32>,
    /// How many replicas may be replaced at one time whose failure only the operator's
    /// heartbeats see, while the kubelet still reports their pods Ready (0 to 1000):
    /// when the operator cannot reach many pods at once, the fault is likely between
    /// it and them, and replacing them all would empty the ring. The others keep
    /// serving, and Degraded (ReplicasUnreachable) names them. A replica whose
    /// container exited, whose pod is gone or NotReady is replaced whatever this says
    /// [default: 1; 0: never on heartbeats alone].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_POOL_REPLICAS), extend("format" = "int32"))]
    pub max_unconfirmed_replacements: Option<u32>,
    /// How long a new pod may fail its heartbeats before they count, in milliseconds
    /// (an image that takes a while to listen): failures count from its first success
    /// or once this has passed [default: 30000; at most 1 hour].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_STARTUP_GRACE_MS), extend("format" = "int32"))]
    pub startup_grace_ms: Option<u64>,
    /// What a heartbeat asks: `http` (`GET /heartbeat` answered 200) or `grpc`
    /// (`grpc.health.v1.Health/Check` over h2c answered SERVING, for replicas that
    /// speak only gRPC). The operator's heartbeats, the proxies' and the pods'
    /// readiness probe all ask it [default: http].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
}

/// What the reconciler saw at its last pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolStatus {
    /// Desired replicas (the scale subresource reads this).
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX), extend("format" = "int32"))]
    pub replicas: u32,
    /// Replicas whose heartbeats succeed: the members of the ring.
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX), extend("format" = "int32"))]
    pub ready_replicas: u32,
    /// Replicas served by a pod of the current template (`spec.image`, `spec.port`):
    /// below `replicas` while a rollout is under way.
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX), extend("format" = "int32"))]
    pub updated_replicas: u32,
    /// Every desired replica: its logical name, its pod and whether it is in the ring.
    /// Keyed by `name` (the reconciler lists each desired name once).
    #[serde(default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"]
    ))]
    pub members: Vec<MemberStatus>,
    /// Each slot whose replica was replaced: its original name, the replica that
    /// holds it now and how often it was replaced. One entry per slot, so the status
    /// stays small however often a pod fails. Keyed by `original`.
    #[serde(default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["original"]
    ))]
    pub emergency_replacements: Vec<ReplacementStatus>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// `Ready`: every desired replica is in the ring; `Degraded`: the spec cannot
    /// be carried out as written (the message says why). One condition per `type`.
    #[serde(default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Vec<Condition>,
    /// Label selector of the pool's pods (`ringlb.dev/pool=<name>`) in the string form
    /// that the scale subresource reads (`labelSelectorPath: .status.selector`), so that
    /// a HorizontalPodAutoscaler can find them. Absent until the reconciler writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Logical name: what `/rep` lists and `/home` answers.
    pub name: String,
    /// Name of its pod (DNS-1123 form of the logical name).
    pub pod: String,
    /// Heartbeats succeed: the replica is in the ring.
    pub ready: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementStatus {
    /// The slot: the name the spec gives it (`Server2`, a hostname).
    pub original: String,
    /// The emergency replica that holds the slot now.
    pub replacement: String,
    /// Replacements of this slot so far.
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX), extend("format" = "int32"))]
    pub count: u32,
    /// Replacements in a row of replicas that never answered a heartbeat (an image
    /// that exits at start, a wrong port): the next one waits 1 s, 2 s, 4 s, … up to
    /// 5 minutes. Back to 0 when a replica of the slot fails after it had served.
    #[serde(default)]
    #[schemars(range(min = 0, max = i32::MAX), extend("format" = "int32"))]
    pub unready_streak: u32,
}

impl ServerPoolSpec {
    /// The ring of the proxy: the preset with the overrides, validated.
    pub fn ring_config(&self) -> Result<RingConfig, String> {
        let hashing = self.hashing.clone().unwrap_or_default();
        let mut config = RingConfig::preset(hashing.preset.unwrap_or(Preset::Default));
        if let Some(algorithm) = hashing.algorithm {
            config.algorithm = algorithm;
        }
        if let Some(hash) = hashing.hash {
            config.hash = hash;
        }
        if let Some(slots) = hashing.slots {
            config.slots = slots;
        }
        if let Some(vnodes) = hashing.vnodes {
            config.vnodes = vnodes;
        }
        config.validate()?;
        Ok(config)
    }

    /// Bounded loads: `None` when off. The schema bounds the factor; one that gets past
    /// it anyway (an older CRD) is refused.
    pub fn balance_factor(&self) -> Result<Option<BalanceFactor>, String> {
        let factor = self.hashing.as_ref().and_then(|h| h.balance_factor);
        factor.map(BalanceFactor::new).transpose()
    }

    /// Heartbeat interval, timeout and threshold, with the local defaults for what is unset.
    pub fn health_settings(&self) -> HealthSettings {
        let defaults = HealthSettings::default();
        let heartbeat = self.heartbeat.clone().unwrap_or_default();
        let millis = |ms: Option<u64>, default: Duration| {
            ms.filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .unwrap_or(default)
        };
        HealthSettings {
            interval: millis(heartbeat.interval_ms, defaults.interval),
            timeout: millis(heartbeat.timeout_ms, defaults.timeout),
            failure_threshold: heartbeat
                .failure_threshold
                .unwrap_or(defaults.failure_threshold)
                .max(1),
            check: heartbeat.check.unwrap_or_default(),
        }
    }

    /// `spec.heartbeat.maxUnconfirmedReplacements` (see [`HeartbeatSpec`]).
    pub fn max_unconfirmed_replacements(&self) -> u32 {
        self.heartbeat
            .as_ref()
            .and_then(|h| h.max_unconfirmed_replacements)
            .unwrap_or(1)
    }

    /// How long a new pod's failed heartbeats are not counted (see [`HeartbeatSpec`]).
    pub fn startup_grace(&self) -> Duration {
        let ms = self
            .heartbeat
            .as_ref()
            .and_then(|h| h.startup_grace_ms)
            .unwrap_or(DEFAULT_STARTUP_GRACE_MS);
        Duration::from_millis(ms)
    }
}

/// `spec.heartbeat.startupGraceMs` when unset.
pub const DEFAULT_STARTUP_GRACE_MS: u64 = 30_000;

/// The first line of the generated CRD file.
const GENERATED_HEADER: &str =
    "# Generated by `ringlb crd` from controller/src/operator/crd.rs: do not edit by hand.\n";

/// The CustomResourceDefinition of `ServerPool` as YAML: what `ringlb crd` prints
/// and what `crds/serverpool.yaml` holds.
/// `namespace/name`: how the operator keys what it keeps per pool (its memory, its
/// heartbeat tasks).
pub fn pool_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&ServerPool::crd())
        .expect("a CustomResourceDefinition serializes to YAML");
    format!("{GENERATED_HEADER}{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    #[test]
    fn checked_in_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/serverpool.yaml");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "crds/serverpool.yaml is out of date: run `just crd` \
             (cargo run -- crd > crds/serverpool.yaml) and commit it"
        );
    }

    #[test]
    fn crd_has_the_contract_shape() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_yaml()).unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("serverpools.ringlb.dev"));
        assert_eq!(crd.spec.group, "ringlb.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, "ServerPool");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sp".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "Desired",
                "Ready",
                "Up-to-date",
                "Available",
                "Degraded",
                "Age"
            ]
        );
    }

    #[test]
    fn spec_defaults_and_settings() {
        let spec: ServerPoolSpec = serde_json::from_str(r#"{"replicas": 3}"#).unwrap();
        assert_eq!(spec.image, DEFAULT_REPLICA_IMAGE);
        assert_eq!(spec.port, DEFAULT_REPLICA_PORT);
        assert_eq!(spec.ring_config().unwrap(), RingConfig::default());
        assert_eq!(spec.health_settings(), HealthSettings::default());

        let spec: ServerPoolSpec = serde_json::from_str(
            r#"{"replicas": 1, "hashing": {"preset": "course", "vnodes": 5},
                "heartbeat": {"intervalMs": 200, "timeoutMs": 100, "failureThreshold": 2}}"#,
        )
        .unwrap();
        let ring = spec.ring_config().unwrap();
        assert_eq!((ring.slots, ring.vnodes), (512, 5));
        let health = spec.health_settings();
        assert_eq!(health.interval, Duration::from_millis(200));
        assert_eq!(health.timeout, Duration::from_millis(100));
        assert_eq!(health.failure_threshold, 2);

        let bad: ServerPoolSpec = serde_json::from_str(
            r#"{"replicas": 1, "hashing": {"algorithm": "maglev", "slots": 100}}"#,
        )
        .unwrap();
        assert!(bad.ring_config().unwrap_err().contains("prime"));

        let bounded: ServerPoolSpec =
            serde_json::from_str(r#"{"replicas": 1, "hashing": {"balanceFactor": 1.25}}"#).unwrap();
        assert_eq!(bounded.balance_factor().unwrap().unwrap().get(), 1.25);
        assert_eq!(spec.balance_factor(), Ok(None));
        let below_one: ServerPoolSpec =
            serde_json::from_str(r#"{"replicas": 1, "hashing": {"balanceFactor": 0.5}}"#).unwrap();
        assert!(below_one.balance_factor().is_err());
    }

    // ---- the schema's bounds and rules, read back from the generated CRD ----

    use serde_json::{Value, json};

    /// The `openAPIV3Schema` of the generated CRD, as JSON.
    fn open_api_schema() -> Value {
        let crd = ServerPool::crd();
        let schema = crd.spec.versions[0].schema.clone().unwrap();
        serde_json::to_value(schema.open_api_v3_schema.unwrap()).unwrap()
    }

    /// The subschema at `path` (property names separated by dots; `[]` for array items).
    fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(schema, |node, key| {
            let next = if key == "[]" {
                &node["items"]
            } else {
                &node["properties"][key]
            };
            assert!(!next.is_null(), "no schema at {path} (stopped at {key})");
            next
        })
    }

    /// `(format, minimum, maximum)` of the integer at `path`.
    fn int_bounds(schema: &Value, path: &str) -> (String, Option<f64>, Option<f64>) {
        let node = at(schema, path);
        assert_eq!(node["type"], "integer", "{path}");
        (
            node["format"].as_str().unwrap_or_default().to_owned(),
            node["minimum"].as_f64(),
            node["maximum"].as_f64(),
        )
    }

    fn int32(min: f64, max: f64) -> (String, Option<f64>, Option<f64>) {
        ("int32".to_owned(), Some(min), Some(max))
    }

    #[test]
    fn spec_integers_are_int32_with_exact_bounds() {
        let schema = open_api_schema();
        let expected = [
            ("spec.replicas", int32(0.0, 1000.0)),
            ("spec.port", int32(1.0, 65_535.0)),
            ("spec.heartbeat.intervalMs", int32(100.0, 3_600_000.0)),
            ("spec.heartbeat.timeoutMs", int32(10.0, 60_000.0)),
            ("spec.heartbeat.failureThreshold", int32(1.0, 100.0)),
            ("spec.heartbeat.startupGraceMs", int32(0.0, 3_600_000.0)),
            (
                "spec.heartbeat.maxUnconfirmedReplacements",
                int32(0.0, 1000.0),
            ),
            ("spec.hashing.slots", int32(0.0, 16_777_216.0)),
            ("spec.hashing.vnodes", int32(0.0, 10_000.0)),
        ];
        for (path, bounds) in &expected {
            assert_eq!(&int_bounds(&schema, path), bounds, "{path}");
        }
        // No integer of spec is left without a signed format and both bounds (a new
        // field must choose its own), and every bound fits the format.
        fn walk(node: &Value, path: &str, found: &mut Vec<String>) {
            // Kubernetes' own pod types, which the API server checks when it admits
            // the pod (a refusal is FailedCreate).
            if path == "spec.template" {
                return;
            }
            if node["type"] == "integer" {
                let format = node["format"].as_str().unwrap_or_default();
                let limit = match format {
                    "int32" => f64::from(i32::MAX),
                    "int64" => i64::MAX as f64,
                    other => panic!("{path}: format {other:?}, not int32 or int64"),
                };
                let (min, max) = (node["minimum"].as_f64(), node["maximum"].as_f64());
                assert!(min.is_some_and(|m| m >= 0.0), "{path}: minimum {min:?}");
                assert!(max.is_some_and(|m| m <= limit), "{path}: maximum {max:?}");
                found.push(path.to_owned());
            }
            for (key, child) in node["properties"].as_object().into_iter().flatten() {
                walk(child, &format!("{path}.{key}"), found);
            }
            if node.get("items").is_some() {
                walk(&node["items"], &format!("{path}[]"), found);
            }
        }
        let mut found = Vec::new();
        walk(at(&schema, "spec"), "spec", &mut found);
        found.sort();
        let mut paths: Vec<&str> = expected.iter().map(|(path, _)| *path).collect();
        paths.sort();
        assert_eq!(found, paths);
    }

    #[test]
    fn schema_bounds_match_what_the_code_accepts() {
        // The table and vnode limits are `RingConfig::validate`'s.
        let slot = |slots, vnodes| RingConfig {
            slots,
            vnodes,
            ..RingConfig::course()
        };
        assert_eq!(slot(MAX_SLOTS, 9).validate(), Ok(()));
        assert!(slot(MAX_SLOTS + 1, 9).validate().is_err());
        let point = |vnodes| RingConfig {
            algorithm: Algorithm::Point,
            vnodes,
            ..RingConfig::default()
        };
        assert_eq!(point(MAX_VNODES).validate(), Ok(()));
        assert!(point(MAX_VNODES + 1).validate().is_err());
        // Every bound fits the Rust field it guards.
        assert!(u64::from(MAX_POOL_REPLICAS) <= u64::from(u32::MAX));
        assert!(MAX_INTERVAL_MS <= i32::MAX as u64 && MAX_STARTUP_GRACE_MS <= i32::MAX as u64);
    }

    #[test]
    fn status_integers_are_signed_and_non_negative() {
        let schema = open_api_schema();
        for path in ["status.replicas", "status.readyReplicas"] {
            assert_eq!(
                int_bounds(&schema, path),
                int32(0.0, f64::from(i32::MAX)),
                "{path}"
            );
        }
        assert_eq!(
            int_bounds(&schema, "status.observedGeneration"),
            ("int64".to_owned(), Some(0.0), None)
        );
    }

    #[test]
    fn hostnames_are_a_set_of_replica_names() {
        let schema = open_api_schema();
        let hostnames = at(&schema, "spec.hostnames");
        assert_eq!(hostnames["maxItems"], json!(1000));
        assert_eq!(hostnames["x-kubernetes-list-type"], "set");
        let item = &hostnames["items"];
        assert_eq!(item["type"], "string");
        assert_eq!(item["minLength"], json!(1));
        assert_eq!(item["maxLength"], json!(63));
        assert_eq!(item["pattern"], "^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$");
    }

    #[test]
    fn the_scale_selector_is_a_status_string_left_out_while_unset() {
        let schema = open_api_schema();
        assert_eq!(at(&schema, "status.selector")["type"], "string");
        let status = ServerPoolStatus::default();
        let json = serde_json::to_value(&status).unwrap();
        assert!(json.get("selector").is_none(), "{json}");
        let status = ServerPoolStatus {
            selector: Some("ringlb.dev/pool=demo".to_owned()),
            ..status
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["selector"], "ringlb.dev/pool=demo");
        // A status written before the field existed reads back as unset.
        let old: ServerPoolStatus = serde_json::from_value(json!({ "replicas": 3 })).unwrap();
        assert_eq!(old.selector, None);
    }

    #[test]
    fn status_lists_are_maps_keyed_by_type_and_name() {
        let schema = open_api_schema();
        for (path, key) in [("status.conditions", "type"), ("status.members", "name")] {
            let list = at(&schema, path);
            assert_eq!(list["x-kubernetes-list-type"], "map", "{path}");
            assert_eq!(list["x-kubernetes-list-map-keys"], json!([key]), "{path}");
            // A map key must be required in every item.
            let required = list["items"]["required"].as_array().unwrap();
            assert!(required.contains(&json!(key)), "{path}");
        }
    }

    #[test]
    fn a_hostname_that_shadows_a_generated_name_is_refused_at_admission() {
        let schema = open_api_schema();
        assert_eq!(
            at(&schema, "spec.hostnames")["x-kubernetes-validations"],
            json!([{
                "rule": "self.all(h, !h.lowerAscii().replace('_', '-')\
                         .matches('^(server[0-9]+|emergency-[0-9]+)$') \
                         || h.matches('^(Server[0-9]+|emergency_[0-9]+)$'))",
                "message": HOSTNAME_SHADOW_MESSAGE,
            }])
        );
    }

    #[test]
    fn the_pod_template_has_kubernetes_own_schema_and_leaves_the_operators_env_alone() {
        let schema = open_api_schema();
        let template = at(&schema, "spec.template");
        let fields: Vec<&String> = template["properties"].as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            [
                "affinity",
                "containerSecurityContext",
                "env",
                "imagePullSecrets",
                "metadata",
                "nodeSelector",
                "priorityClassName",
                "resources",
                "securityContext",
                "terminationGracePeriodSeconds",
                "tolerations",
                "topologySpreadConstraints",
            ]
        );
        // From k8s-openapi's types: a quantity is an int or a string, as in a Pod.
        let limits = &template["properties"]["resources"]["properties"]["limits"];
        assert_eq!(
            limits["additionalProperties"]["x-kubernetes-int-or-string"], true,
            "{limits}"
        );
        assert!(
            template["properties"]["affinity"]["properties"]
                .get("podAntiAffinity")
                .is_some()
        );
        let rules = template["x-kubernetes-validations"].as_array().unwrap();
        assert!(
            rules[0]["rule"]
                .as_str()
                .unwrap()
                .contains("['SERVER_ID', 'PORT', 'REPLICA_HOST']")
        );
    }

    #[test]
    fn heartbeat_timeout_must_be_shorter_than_the_interval() {
        let schema = open_api_schema();
        assert_eq!(
            at(&schema, "spec.heartbeat")["x-kubernetes-validations"],
            json!([{
                "rule": "!has(self.timeoutMs) || !has(self.intervalMs) || self.timeoutMs < self.intervalMs",
                "message": "timeoutMs must be less than intervalMs"
            }])
        );
    }

    #[test]
    fn hashing_rules_say_what_ring_config_refuses() {
        let schema = open_api_schema();
        let rules = at(&schema, "spec.hashing")["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .clone();
        let messages: Vec<&str> = rules
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert_eq!(
            messages,
            [
                "slots must be at least 1 for the slot, maglev and rank-table algorithms",
                "vnodes must be at least 1 for the slot and point algorithms",
                "a slot ring cannot hold more virtual servers (vnodes) than it has slots",
                "slots must be prime for the maglev and rank-table algorithms, e.g. 65537 or \
                 262147 (the course preset's 512 is not)",
            ]
        );
        let rule = |i: usize| rules[i]["rule"].as_str().unwrap().to_owned();
        // The effective settings: the spec's, else the preset's.
        let algorithm = "(has(self.algorithm) ? self.algorithm : (has(self.preset) && \
                         self.preset == 'course' ? 'slot' : 'rank-table'))";
        let slots = "(has(self.slots) ? self.slots : (has(self.preset) && \
                     self.preset == 'course' ? 512 : 262147))";
        let vnodes = "(has(self.vnodes) ? self.vnodes : (has(self.preset) && \
                      self.preset == 'course' ? 9 : 160))";
        assert_eq!(
            rule(0),
            format!("!({algorithm} in ['slot', 'maglev', 'rank-table']) || {slots} >= 1")
        );
        assert_eq!(
            rule(1),
            format!("!({algorithm} in ['slot', 'point']) || {vnodes} >= 1")
        );
        assert_eq!(
            rule(2),
            format!("{algorithm} != 'slot' || {vnodes} <= {slots}")
        );
        // Primality: trial division by every prime up to √MAX_SLOTS, written out.
        let prime = rule(3);
        let (head, rest) = prime.split_once('[').unwrap();
        let (head, rest) = (head.to_owned(), rest.split_once('[').unwrap());
        assert_eq!(
            format!("{head}[{}", rest.0),
            format!(
                "!({algorithm} in ['maglev', 'rank-table']) || (has(self.slots) ? \
                 self.slots >= 2 && "
            )
        );
        let (list, tail) = rest.1.split_once(']').unwrap();
        assert_eq!(
            tail,
            ".all(p, p * p > self.slots || self.slots % p != 0) : \
             !(has(self.preset) && self.preset == 'course'))"
        );
        let divisors: Vec<u64> = list.split(", ").map(|p| p.parse().unwrap()).collect();
        assert_eq!(divisors.len(), 564);
        assert_eq!((divisors[0], divisors[563]), (2, 4093));
        assert!(
            4097 * 4097 > u64::from(MAX_SLOTS),
            "the next prime after 4093 is 4099"
        );
        // Trial division by these divisors is exactly `RingConfig::validate`'s primality,
        // checked on the sizes that matter: small ones, the presets', squares of the
        // largest divisors and the neighbours of the maximum.
        let passes = |n: u64| n >= 2 && divisors.iter().all(|p| p * p > n || !n.is_multiple_of(*p));
        let maglev = |slots| RingConfig {
            algorithm: Algorithm::Maglev,
            slots,
            ..RingConfig::default()
        };
        let mut sizes: Vec<u32> = (0..5000).collect();
        sizes.extend([65_536, 65_537, 262_144, 262_147, 4093 * 4093, 4091 * 4093]);
        sizes.extend(MAX_SLOTS - 100..=MAX_SLOTS);
        for n in sizes {
            assert_eq!(
                passes(u64::from(n)),
                maglev(n).validate().is_ok(),
                "slots {n}"
            );
        }
    }

    // A tiny checker of `minimum`, `maximum`, `minLength`, `maxLength`, `maxItems` and
    // `pattern` (no other keyword: types, enums and CEL are the API server's), to see that
    // the schema alone refuses the values that once broke the watchers.

    /// Why `doc` breaks the bounds of `schema`, one line per broken keyword.
    fn bound_errors(schema: &Value, doc: &Value, path: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let mut fail = |keyword: &str| errors.push(format!("{path}: {keyword}"));
        match doc {
            Value::Number(n) => {
                let n = n.as_f64().unwrap();
                if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                    fail("minimum");
                }
                if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                    fail("maximum");
                }
            }
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if schema["minLength"].as_u64().is_some_and(|min| len < min) {
                    fail("minLength");
                }
                if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
                    fail("maxLength");
                }
                // An OpenAPI `pattern` is an ECMA 262 expression, matched anywhere unless
                // anchored; the schema's are plain enough for the `regex` crate.
                if let Some(pattern) = schema["pattern"].as_str()
                    && !regex::Regex::new(pattern).unwrap().is_match(s)
                {
                    fail("pattern");
                }
            }
            Value::Array(items) => {
                if schema["maxItems"]
                    .as_u64()
                    .is_some_and(|max| items.len() as u64 > max)
                {
                    fail("maxItems");
                }
                for (i, item) in items.iter().enumerate() {
                    errors.extend(bound_errors(
                        &schema["items"],
                        item,
                        &format!("{path}[{i}]"),
                    ));
                }
            }
            Value::Object(fields) => {
                for (key, value) in fields {
                    let sub = &schema["properties"][key];
                    if !sub.is_null() {
                        errors.extend(bound_errors(sub, value, &format!("{path}.{key}")));
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        errors
    }

    /// The bound errors of a pool whose spec is `{"replicas": 3}` with `spec` merged in.
    fn spec_errors(spec: Value) -> Vec<String> {
        let mut pool = json!({ "replicas": 3 });
        pool.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        bound_errors(&open_api_schema(), &json!({ "spec": pool }), "")
    }

    #[test]
    fn the_schema_refuses_out_of_range_specs() {
        assert_eq!(spec_errors(json!({})), Vec::<String>::new());
        let refused = [
            (
                json!({ "replicas": 4_294_967_296_u64 }),
                ".spec.replicas: maximum",
            ),
            (json!({ "replicas": 1001 }), ".spec.replicas: maximum"),
            (json!({ "replicas": -1 }), ".spec.replicas: minimum"),
            (json!({ "port": 0 }), ".spec.port: minimum"),
            (json!({ "port": 65_536 }), ".spec.port: maximum"),
            (
                json!({ "heartbeat": { "intervalMs": 10 } }),
                ".spec.heartbeat.intervalMs: minimum",
            ),
            (
                json!({ "heartbeat": { "timeoutMs": 60_001 } }),
                ".spec.heartbeat.timeoutMs: maximum",
            ),
            (
                json!({ "heartbeat": { "failureThreshold": 0 } }),
                ".spec.heartbeat.failureThreshold: minimum",
            ),
            (
                json!({ "hashing": { "slots": 16_777_217 } }),
                ".spec.hashing.slots: maximum",
            ),
            (
                json!({ "hashing": { "vnodes": 10_001 } }),
                ".spec.hashing.vnodes: maximum",
            ),
            (
                json!({ "hostnames": ["ok", "bad name"] }),
                ".spec.hostnames[1]: pattern",
            ),
            (
                json!({ "hostnames": ["Server_"] }),
                ".spec.hostnames[0]: pattern",
            ),
            (
                json!({ "hostnames": ["x".repeat(64)] }),
                ".spec.hostnames[0]: maxLength",
            ),
            (
                json!({ "hostnames": [""] }),
                ".spec.hostnames[0]: minLength",
            ),
        ];
        for (spec, error) in refused {
            let errors = spec_errors(spec.clone());
            assert!(errors.iter().any(|e| e == error), "{spec}: {errors:?}");
        }
        let too_many: Vec<String> = (0..1001).map(|i| format!("web-{i}")).collect();
        assert_eq!(
            spec_errors(json!({ "hostnames": too_many })),
            [".spec.hostnames: maxItems"]
        );
        // The limits themselves are accepted.
        let limits = json!({
            "replicas": 1000, "port": 65_535, "hostnames": ["x".repeat(63), "emergency_58", "9"],
            "heartbeat": { "intervalMs": 100, "timeoutMs": 10, "failureThreshold": 100 },
            "hashing": { "slots": 16_777_216, "vnodes": 10_000 }
        });
        assert_eq!(spec_errors(limits), Vec::<String>::new());
    }

    #[test]
    fn the_hostname_pattern_is_what_the_operator_accepts() {
        // Every string up to 3 characters over an alphabet with every kind of character,
        // plus long ones: the schema (pattern and lengths) accepts exactly the names that
        // are replica names (`ReplicaName::parse`) and make pod names (`pod_slots::pod_name`).
        let alphabet = ['a', 'Z', '7', '_', '-', '.', ' ', 'é'];
        let mut names = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = names
                .iter()
                .filter(|n| n.chars().count() == names.last().unwrap().chars().count())
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.extend([
            "a".repeat(63),
            "a".repeat(64),
            format!("{}_", "a".repeat(62)),
        ]);
        let item = at(&open_api_schema(), "spec.hostnames.[]").clone();
        for name in names {
            let by_schema = bound_errors(&item, &json!(name), "").is_empty();
            let by_code = crate::replica_name::ReplicaName::parse(&name)
                .ok()
                .is_some_and(|n| super::super::pod_slots::pod_name(&n).is_ok());
            assert_eq!(by_schema, by_code, "{name:?}");
        }
    }
}
