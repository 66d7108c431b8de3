//! What the operator needs from the Kubernetes API, and tests that the manifests in
//! `deploy/` and `crds/` parse into the Kubernetes types and grant exactly that.

/// Every API permission the operator uses: (API group, resource, verbs).
///
/// - the controller lists and watches pools and pods, creates and deletes pods,
///   and patches pool status;
/// - the in-cluster proxy gets its pool and patches its spec on `/add` and `/rm`;
/// - the event recorder creates events and patches them when an event repeats;
/// - the leader election reads the Lease, creates it if missing, and patches it to
///   take, renew and release it.
pub const PERMISSIONS: &[(&str, &str, &[&str])] = &[
    (
        "ringlb.dev",
        "serverpools",
        &["get", "list", "watch", "patch"],
    ),
    ("ringlb.dev", "serverpools/status", &["patch"]),
    ("", "pods", &["list", "watch", "create", "delete"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use serde::Deserialize;

    use super::PERMISSIONS;
    use crate::operator::ServerPool;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every YAML document of every file in `dir`, with where it came from.
    fn documents(dir: &str) -> Vec<(String, serde_yaml::Value)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}/: {e}"))
            .map(|entry| entry.unwrap().path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no manifests in {dir}/");
        let mut docs = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = serde_yaml::Value::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: document {i}: {e}", file.display()));
                if !value.is_null() {
                    docs.push((format!("{} #{i}", file.display()), value));
                }
            }
        }
        docs
    }

    /// A document parsed into the Kubernetes type of its `apiVersion` and `kind`.
    #[derive(Debug)]
    /// `kubectl apply -k deploy/`: the files it applies.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Kustomization {
        #[serde(rename = "apiVersion")]
        _api_version: String,
        #[serde(rename = "kind")]
        _kind: String,
        resources: Vec<String>,
    }

    enum Manifest {
        Deployment(Box<Deployment>),
        Service(Box<Service>),
        ServiceAccount(Box<ServiceAccount>),
        Role(Role),
        ClusterRole(ClusterRole),
        RoleBinding(RoleBinding),
        ClusterRoleBinding(ClusterRoleBinding),
        Kustomization(Kustomization),
        Secret(Box<Secret>),
        Crd(Box<CustomResourceDefinition>),
        ServerPool(Box<ServerPool>),
    }

    fn parse(origin: &str, value: serde_yaml::Value) -> Manifest {
        fn typed<T: serde::de::DeserializeOwned>(origin: &str, value: serde_yaml::Value) -> T {
            // Through JSON: the form the API server receives.
            let json = serde_json::to_value(&value).unwrap();
            serde_json::from_value(json).unwrap_or_else(|e| panic!("{origin}: {e}"))
        }
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => Manifest::Deployment(typed(origin, value)),
            ("v1", "Service") => Manifest::Service(typed(origin, value)),
            ("v1", "ServiceAccount") => Manifest::ServiceAccount(typed(origin, value)),
            ("v1", "Secret") => Manifest::Secret(typed(origin, value)),
            ("rbac.authorization.k8s.io/v1", "Role") => Manifest::Role(typed(origin, value)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                Manifest::ClusterRole(typed(origin, value))
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                Manifest::RoleBinding(typed(origin, value))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Manifest::ClusterRoleBinding(typed(origin, value))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                Manifest::Crd(typed(origin, value))
            }
            ("ringlb.dev/v1alpha1", "ServerPool") => Manifest::ServerPool(typed(origin, value)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                Manifest::Kustomization(typed(origin, value))
            }
            other => panic!("{origin}: no Kubernetes type known for {other:?}"),
        }
    }

    /// Every key of `value` must survive a round trip through the typed form: a
    /// misspelt field (`imagePullPolicyy`, `secretKeyref`) is dropped by serde and
    /// caught here.
    fn assert_no_unknown_fields(
        origin: &str,
        value: &serde_json::Value,
        typed: &serde_json::Value,
    ) {
        match (value, typed) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (key, v) in a {
                    let Some(t) = b.get(key) else {
                        panic!("{origin}: field `{key}` is not part of the Kubernetes type");
                    };
                    assert_no_unknown_fields(&format!("{origin}.{key}"), v, t);
                }
            }
            (serde_json::Value::Array(a), serde_json::Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{origin}");
                for (i, (v, t)) in a.iter().zip(b).enumerate() {
                    assert_no_unknown_fields(&format!("{origin}[{i}]"), v, t);
                }
            }
            _ => {}
        }
    }

    fn all_manifests() -> Vec<(String, Manifest)> {
        let mut out = Vec::new();
        for dir in ["deploy", "crds"] {
            for (origin, value) in documents(dir) {
                let json = serde_json::to_value(&value).unwrap();
                let manifest = parse(&origin, value);
                let round_trip = match &manifest {
                    Manifest::Deployment(m) => serde_json::to_value(m),
                    Manifest::Service(m) => serde_json::to_value(m),
                    Manifest::ServiceAccount(m) => serde_json::to_value(m),
                    Manifest::Role(m) => serde_json::to_value(m),
                    Manifest::ClusterRole(m) => serde_json::to_value(m),
                    Manifest::RoleBinding(m) => serde_json::to_value(m),
                    Manifest::ClusterRoleBinding(m) => serde_json::to_value(m),
                    Manifest::Secret(m) => serde_json::to_value(m),
                    Manifest::Crd(m) => serde_json::to_value(m),
                    Manifest::ServerPool(m) => serde_json::to_value(m),
                    // Checked by `deny_unknown_fields` as it is read.
                    Manifest::Kustomization(_) => Ok(json.clone()),
                }
                .unwrap();
                assert_no_unknown_fields(&origin, &json, &round_trip);
                out.push((origin, manifest));
            }
        }
        out
    }

    #[test]
    fn the_kustomization_applies_every_other_file_of_deploy() {
        let kustomization = all_manifests()
            .into_iter()
            .find_map(|(origin, m)| match m {
                Manifest::Kustomization(k) if origin.contains("deploy/") => Some(k),
                _ => None,
            })
            .expect("deploy/kustomization.yaml");
        let listed: BTreeSet<String> = kustomization.resources.into_iter().collect();
        let files: BTreeSet<String> = std::fs::read_dir(repo().join("deploy"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
            .collect();
        assert_eq!(listed, files);
    }

    #[test]
    fn every_manifest_parses_into_its_kubernetes_type() {
        let manifests = all_manifests();
        let kinds: BTreeSet<&str> = manifests
            .iter()
            .map(|(_, m)| match m {
                Manifest::Deployment(_) => "Deployment",
                Manifest::Service(_) => "Service",
                Manifest::ServiceAccount(_) => "ServiceAccount",
                Manifest::Role(_) | Manifest::ClusterRole(_) => "Role",
                Manifest::RoleBinding(_) | Manifest::ClusterRoleBinding(_) => "RoleBinding",
                Manifest::Secret(_) => "Secret",
                Manifest::Crd(_) => "CustomResourceDefinition",
                Manifest::ServerPool(_) => "ServerPool",
                Manifest::Kustomization(_) => "Kustomization",
            })
            .collect();
        for expected in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "Secret",
            "CustomResourceDefinition",
            "ServerPool",
        ] {
            assert!(
                kinds.contains(expected),
                "no {expected} in deploy/ or crds/"
            );
        }
    }

    #[test]
    fn rbac_grants_exactly_what_the_operator_uses() {
        let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (origin, manifest) in all_manifests() {
            let rules = match manifest {
                Manifest::Role(role) => role.rules,
                Manifest::ClusterRole(role) => role.rules,
                _ => continue,
            };
            for rule in rules.into_iter().flatten() {
                assert!(
                    rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
                    "{origin}: unexpected rule shape"
                );
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        assert!(
                            !rule.verbs.iter().any(|v| v == "*") && resource != "*",
                            "{origin}: wildcards are not least privilege"
                        );
                        granted
                            .entry((group.clone(), resource.clone()))
                            .or_default()
                            .extend(rule.verbs.iter().cloned());
                    }
                }
            }
        }
        let needed: BTreeMap<(String, String), BTreeSet<String>> = PERMISSIONS
            .iter()
            .map(|(group, resource, verbs)| {
                (
                    (group.to_string(), resource.to_string()),
                    verbs.iter().map(|v| v.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(granted, needed);
    }

    #[test]
    fn deployment_is_wired_as_the_operator_expects() {
        let manifests = all_manifests();
        let deployment = manifests
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::Deployment(d) => Some(d),
                _ => None,
            })
            .unwrap();
        let pod = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("ringlb"));
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_deref(),
            Some(&["operator".to_owned()][..])
        );
        assert!(container.liveness_probe.is_some() && container.readiness_probe.is_some());
        assert!(container.resources.as_ref().unwrap().requests.is_some());
        let env: BTreeMap<&str, &k8s_openapi::api::core::v1::EnvVar> = container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect();
        for name in [
            "RINGLB_POOL",
            "RINGLB_NAMESPACE",
            "RINGLB_LISTEN",
            "RINGLB_OPS_LISTEN",
        ] {
            assert!(env.contains_key(name), "{name} is not set");
        }
        let token = env["RINGLB_ADMIN_TOKEN"].value_from.as_ref().unwrap();
        let secret_ref = token.secret_key_ref.as_ref().unwrap();
        assert_eq!(secret_ref.name, "ringlb-admin");
        let secret = manifests
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::Secret(s) => Some(s),
                _ => None,
            })
            .unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("ringlb-admin"));
        assert!(
            secret
                .string_data
                .as_ref()
                .unwrap()
                .contains_key(&secret_ref.key)
        );

        let service = manifests
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::Service(s) => Some(s),
                _ => None,
            })
            .unwrap();
        let ports = service.spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert!(ports.iter().any(|p| p.port == 5000));

        let pool = manifests
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::ServerPool(p) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(pool.metadata.name.as_deref(), Some("demo"));
        assert_eq!(pool.spec.replicas, 3);
        let pool_env = env["RINGLB_POOL"].value.as_deref();
        assert_eq!(pool_env, Some("demo"));
    }
}
