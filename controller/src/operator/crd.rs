//! The `ServerPool` custom resource: what a user writes (spec) and what the
//! reconciler reports (status). `ringlb crd` prints the CustomResourceDefinition
//! generated from these types; `crds/serverpool.yaml` is that output, and a test
//! fails when they differ.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::pool::HealthSettings;
use crate::ring::{Algorithm, HashFn, Preset, RingConfig};

/// The replica image a pool runs unless its spec names another.
pub const DEFAULT_REPLICA_IMAGE: &str = "ringlb-replica:dev";
/// The port replicas listen on unless the spec names another.
pub const DEFAULT_REPLICA_PORT: u16 = 5000;

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
        status_replicas_path = ".status.replicas"
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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolSpec {
    /// Number of replicas to keep alive.
    pub replicas: u32,
    /// Names of the first replicas; the rest are Server1, Server2, … (the lowest
    /// numbers not taken). Names are 1–63 characters of [A-Za-z0-9_-], starting and
    /// (so that they make valid pod names) ending with a letter or digit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Container image of the replicas (serves /home and /heartbeat on `port`).
    #[serde(default = "default_image")]
    pub image: String,
    /// Port the replicas listen on.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Ring settings of the proxy; unset: the default preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing: Option<HashingSpec>,
    /// Heartbeat settings; unset: every second, 500 ms timeout, 3 failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSpec>,
}

fn default_image() -> String {
    DEFAULT_REPLICA_IMAGE.to_owned()
}

fn default_port() -> u16 {
    DEFAULT_REPLICA_PORT
}

/// The ring: a preset, with any of its settings overridden.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HashingSpec {
    /// `default` (measured best) or `course` (512 slots, 9 virtual nodes, quadratic hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashFn>,
    /// Slots of the slot ring, or the (prime) Maglev table size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// Virtual nodes per replica (slot and point rings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnodes: Option<u32>,
}

/// How replicas are heartbeaten.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Time between heartbeats, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// How long one heartbeat may take, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Consecutive failed heartbeats after which a replica is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

/// What the reconciler saw at its last pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPoolStatus {
    /// Desired replicas (the scale subresource reads this).
    #[serde(default)]
    pub replicas: u32,
    /// Replicas whose heartbeats succeed: the members of the ring.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Every desired replica: its logical name, its pod and whether it is in the ring.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Failed replicas and the emergency replicas that took their places.
    #[serde(default)]
    pub emergency_replacements: Vec<ReplacementStatus>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: every desired replica is in the ring; `Degraded`: the spec cannot
    /// be carried out as written (the message says why).
    #[serde(default)]
    pub conditions: Vec<Condition>,
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
    /// Logical name of the replica whose heartbeats failed.
    pub failed: String,
    /// Logical name of the emergency replica that took its place.
    pub replacement: String,
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
        }
    }
}

/// The first line of the generated CRD file.
const GENERATED_HEADER: &str =
    "# Generated by `ringlb crd` from controller/src/operator/crd.rs: do not edit by hand.\n";

/// The CustomResourceDefinition of `ServerPool` as YAML: what `ringlb crd` prints
/// and what `crds/serverpool.yaml` holds.
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
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Desired", "Ready", "Age"]);
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
    }
}
