//! What each command asks of the Kubernetes API, and why (the RBAC test derives
//! the same list from what a fake API server was asked while both commands ran):
//!
//! `ringlb operator` (the control plane, `operator/`):
//! - `serverpools` list, watch: the reconciler's controller follows every pool of its
//!   namespace (`operator/reconciler.rs`); it never reads one pool alone nor writes a spec;
//! - `serverpools/status` patch: the reconciler writes replicas, members,
//!   replacements and conditions (`reconciler.rs`);
//! - `pods` list, watch, get, create, delete: the controller watches the pods of
//!   every pool (`reconciler.rs`; passes and heartbeats read that watch's store),
//!   and `operator/pods.rs` creates missing pods, reads one whose create was refused with 409
//!   (this pool's own, not yet in the store, or another's?), and deletes extras and
//!   failed ones;
//! - `policy` `poddisruptionbudgets` list, watch, patch: each pool's budget, watched
//!   and written by server-side apply when missing or changed (`reconciler.rs`);
//! - `events.k8s.io` `events` create, patch: the event recorder, for every pod
//!   created, deleted or replaced (patched when an event repeats);
//! - `coordination.k8s.io` `leases` get, create, patch: the leader election
//!   (`operator/leader.rs`) reads the Lease (a standby, to see whether its record stands still;
//!   the leader, after a 409), creates it if missing, and patches it with the
//!   resourceVersion it read (a merge patch, checked like an update) to take, renew and
//!   release it.
//!
//! `ringlb proxy --pool NAME` (the data plane, `cluster_proxy/`):
//! - `serverpools` list, watch: the reflector of its one pool (field selector
//!   `metadata.name`), whose status says which members serve (`watch.rs`);
//! - `serverpools` get, patch: `/add` and `/rm` read the pool, then write
//!   `spec.replicas` and `spec.hostnames` with a resourceVersion precondition
//!   (`spec_admin.rs`);
//! - `pods` list, watch: the reflector of the pool's pods (label `ringlb.dev/pool`):
//!   their addresses, and their readiness while the operator is away (`watch.rs`).
//!
//! The tests check that the manifests of `deploy/` and `crds/` parse into their
//! Kubernetes types, grant exactly that to the right pods, and deploy both commands
//! highly available.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        Container, EnvVar, PodSpec, Probe, Secret, Service, ServiceAccount,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde::Deserialize;

    use crate::operator::ServerPool;
    use crate::serving::DRAIN_TIMEOUT;

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

    /// A kustomization (or component) of `deploy/`: the files and bases it applies,
    /// its patches and generated ConfigMaps. Only the fields used here are allowed.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Kustomization {
        #[serde(rename = "apiVersion")]
        _api_version: String,
        kind: String,
        #[serde(default)]
        resources: Vec<String>,
        #[serde(default)]
        patches: Vec<KustomizePatch>,
        #[serde(default)]
        config_map_generator: Vec<ConfigMapGenerator>,
    }

    /// A JSON 6902 patch of one object.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KustomizePatch {
        target: PatchTarget,
        patch: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PatchTarget {
        kind: String,
        name: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ConfigMapGenerator {
        name: String,
        files: Vec<String>,
        options: serde_yaml::Value,
    }

    /// The Prometheus operator's ServiceMonitor, as far as deploy/monitoring uses it.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct ServiceMonitor {
        #[serde(rename = "apiVersion")]
        _api_version: String,
        #[serde(rename = "kind")]
        _kind: String,
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: ServiceMonitorSpec,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ServiceMonitorSpec {
        selector: LabelSelector,
        endpoints: Vec<MonitorEndpoint>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct MonitorEndpoint {
        port: String,
        path: String,
        #[serde(rename = "interval")]
        _interval: String,
    }

    /// A document parsed into the Kubernetes type of its `apiVersion` and `kind`.
    enum Manifest {
        Deployment(Box<Deployment>),
        Service(Box<Service>),
        ServiceAccount(Box<ServiceAccount>),
        Role(Role),
        ClusterRole(ClusterRole),
        RoleBinding(RoleBinding),
        ClusterRoleBinding(ClusterRoleBinding),
        PodDisruptionBudget(Box<PodDisruptionBudget>),
        Kustomization(Kustomization),
        Secret(Box<Secret>),
        NetworkPolicy(Box<NetworkPolicy>),
        ServiceMonitor(Box<ServiceMonitor>),
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
            ("policy/v1", "PodDisruptionBudget") => {
                Manifest::PodDisruptionBudget(typed(origin, value))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                Manifest::Crd(typed(origin, value))
            }
            ("ringlb.dev/v1alpha1", "ServerPool") => Manifest::ServerPool(typed(origin, value)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization")
            | ("kustomize.config.k8s.io/v1alpha1", "Component") => {
                Manifest::Kustomization(typed(origin, value))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                Manifest::NetworkPolicy(typed(origin, value))
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                Manifest::ServiceMonitor(typed(origin, value))
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

    /// The manifests of `dir`, each parsed and checked for unknown fields.
    fn manifests_of(dir: &str) -> Vec<(String, Manifest)> {
        let mut out = Vec::new();
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
                Manifest::PodDisruptionBudget(m) => serde_json::to_value(m),
                Manifest::Secret(m) => serde_json::to_value(m),
                Manifest::NetworkPolicy(m) => serde_json::to_value(m),
                Manifest::Crd(m) => serde_json::to_value(m),
                Manifest::ServerPool(m) => serde_json::to_value(m),
                // Checked by `deny_unknown_fields` as they are read.
                Manifest::Kustomization(_) | Manifest::ServiceMonitor(_) => Ok(json.clone()),
            }
            .unwrap();
            assert_no_unknown_fields(&origin, &json, &round_trip);
            out.push((origin, manifest));
        }
        out
    }

    /// The folders of `deploy/`: `kubectl apply -k deploy/` applies base/; the overlay
    /// and the component are applied by choice.
    const DEPLOY_DIRS: [&str; 4] = [
        "deploy",
        "deploy/base",
        "deploy/all-namespaces",
        "deploy/monitoring",
    ];

    fn all_manifests() -> Vec<(String, Manifest)> {
        let mut out: Vec<(String, Manifest)> = DEPLOY_DIRS
            .iter()
            .flat_map(|dir| manifests_of(dir))
            .collect();
        out.extend(manifests_of("crds"));
        out
    }

    /// The kustomization of `dir`.
    fn kustomization(dir: &str) -> Kustomization {
        manifests_of(dir)
            .into_iter()
            .find_map(|(_, m)| match m {
                Manifest::Kustomization(k) => Some(k),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{dir}/kustomization.yaml"))
    }

    /// `kubectl kustomize DIR`, parsed, where kubectl is installed (it renders without
    /// a cluster); `None` elsewhere, said on stderr.
    fn kustomize(dir: &Path) -> Option<Vec<(String, Manifest)>> {
        let output = match std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(dir)
            .output()
        {
            Ok(output) => output,
            Err(error) => {
                eprintln!("kubectl kustomize {}: not run ({error})", dir.display());
                return None;
            }
        };
        assert!(
            output.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let mut out = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            if !value.is_null() {
                let origin = format!("kubectl kustomize {} #{i}", dir.display());
                if value["kind"].as_str() == Some("ConfigMap") {
                    continue;
                }
                out.push((origin.clone(), parse(&origin, value)));
            }
        }
        Some(out)
    }

    /// What `kubectl apply -k deploy/` creates, by kind.
    #[derive(Default)]
    struct Deployed {
        deployments: Vec<Deployment>,
        services: Vec<Service>,
        service_accounts: Vec<ServiceAccount>,
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
        budgets: Vec<PodDisruptionBudget>,
        secrets: Vec<Secret>,
        network_policies: Vec<NetworkPolicy>,
        monitors: Vec<ServiceMonitor>,
        pools: Vec<ServerPool>,
    }

    /// (API group, resource) → verbs.
    type Permissions = BTreeMap<(String, String), BTreeSet<String>>;

    fn permissions(seen: BTreeSet<crate::operator::fixtures::Permission>) -> Permissions {
        let mut permissions = Permissions::new();
        for (group, resource, verb) in seen {
            permissions
                .entry((group, resource))
                .or_default()
                .insert(verb);
        }
        permissions
    }

    impl Deployed {
        /// What `kubectl apply -k deploy/` applies: base/.
        fn load() -> Self {
            Self::of(manifests_of("deploy/base"))
        }

        fn of(manifests: Vec<(String, Manifest)>) -> Self {
            let mut d = Deployed::default();
            for (_, manifest) in manifests {
                match manifest {
                    Manifest::Deployment(m) => d.deployments.push(*m),
                    Manifest::Service(m) => d.services.push(*m),
                    Manifest::ServiceAccount(m) => d.service_accounts.push(*m),
                    Manifest::Role(m) => d.roles.push(m),
                    Manifest::ClusterRole(m) => d.cluster_roles.push(m),
                    Manifest::RoleBinding(m) => d.role_bindings.push(m),
                    Manifest::ClusterRoleBinding(m) => d.cluster_role_bindings.push(m),
                    Manifest::PodDisruptionBudget(m) => d.budgets.push(*m),
                    Manifest::Secret(m) => d.secrets.push(*m),
                    Manifest::NetworkPolicy(m) => d.network_policies.push(*m),
                    Manifest::ServiceMonitor(m) => d.monitors.push(*m),
                    Manifest::ServerPool(m) => d.pools.push(*m),
                    Manifest::Kustomization(_) | Manifest::Crd(_) => {}
                }
            }
            d
        }

        fn deployment(&self, name: &str) -> &Deployment {
            self.deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no Deployment {name} in deploy/"))
        }

        fn operator(&self) -> &Deployment {
            self.deployment("ringlb-operator")
        }

        fn proxy(&self) -> &Deployment {
            self.deployment("ringlb-proxy")
        }

        /// The union of what the bindings of deploy/ grant to a service account, and
        /// the roles that granted it (`Role/NAME`, `ClusterRole/NAME`).
        fn granted_to(&self, account: &str, namespace: &str) -> (Permissions, BTreeSet<String>) {
            let is_subject = |subjects: &Option<Vec<Subject>>, binding_ns: Option<&str>| {
                subjects.iter().flatten().any(|s| {
                    s.kind == "ServiceAccount"
                        && s.name == account
                        && s.namespace.as_deref().or(binding_ns) == Some(namespace)
                })
            };
            let mut refs: Vec<(&RoleRef, Option<&str>)> = Vec::new();
            for binding in &self.role_bindings {
                let ns = binding.metadata.namespace.as_deref();
                if is_subject(&binding.subjects, ns) {
                    refs.push((&binding.role_ref, ns));
                }
            }
            for binding in &self.cluster_role_bindings {
                if is_subject(&binding.subjects, None) {
                    refs.push((&binding.role_ref, None));
                }
            }
            let mut granted = Permissions::new();
            let mut used = BTreeSet::new();
            for (role_ref, ns) in refs {
                let name = Some(role_ref.name.as_str());
                let rules = match role_ref.kind.as_str() {
                    "Role" => self
                        .roles
                        .iter()
                        .find(|r| {
                            r.metadata.name.as_deref() == name
                                && r.metadata.namespace.as_deref() == ns
                        })
                        .map(|r| &r.rules),
                    "ClusterRole" => self
                        .cluster_roles
                        .iter()
                        .find(|r| r.metadata.name.as_deref() == name)
                        .map(|r| &r.rules),
                    other => panic!("roleRef of kind {other}"),
                }
                .unwrap_or_else(|| {
                    panic!(
                        "a binding of {account} refers to {}/{}, not in deploy/",
                        role_ref.kind, role_ref.name
                    )
                });
                used.insert(format!("{}/{}", role_ref.kind, role_ref.name));
                for rule in rules.iter().flatten() {
                    add_rule(&mut granted, &role_ref.name, rule);
                }
            }
            (granted, used)
        }
    }

    /// The verbs a rule grants. (`resourceNames` narrow a rule to some objects: the
    /// proxy's to its pool, which the proxy test checks; the verbs are the same.)
    fn add_rule(granted: &mut Permissions, origin: &str, rule: &PolicyRule) {
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: unexpected rule shape"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(
                    group != "*" && resource != "*" && !rule.verbs.iter().any(|v| v == "*"),
                    "{origin}: wildcards are not least privilege"
                );
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }

    fn pod_spec(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn pod_labels(deployment: &Deployment) -> &BTreeMap<String, String> {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("pod template labels")
    }

    fn container(deployment: &Deployment) -> &Container {
        let containers = &pod_spec(deployment).containers;
        assert_eq!(
            containers.len(),
            1,
            "{:?}: one container",
            deployment.metadata.name
        );
        &containers[0]
    }

    fn args(container: &Container) -> Vec<&str> {
        container
            .args
            .iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    fn env(container: &Container) -> BTreeMap<&str, &EnvVar> {
        container
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect()
    }

    /// The downward-API field an environment variable is taken from.
    fn field_ref<'a>(env: &BTreeMap<&str, &'a EnvVar>, name: &str) -> Option<&'a str> {
        env.get(name)?
            .value_from
            .as_ref()?
            .field_ref
            .as_ref()
            .map(|f| f.field_path.as_str())
    }

    /// The container port number of a named port.
    fn port(container: &Container, name: &str) -> Option<i32> {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    }

    /// (path, port) of an httpGet probe.
    fn http_get(probe: Option<&Probe>) -> Option<(&str, &IntOrString)> {
        let get = probe?.http_get.as_ref()?;
        Some((get.path.as_deref()?, &get.port))
    }

    /// Whether `selector` selects a pod with these labels (an empty selector selects
    /// every pod, as a PodDisruptionBudget's does).
    fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let by_labels = selector
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("selector operator {other}"),
            }
        });
        by_labels && by_expressions
    }

    fn int(value: Option<&IntOrString>) -> Option<i32> {
        match value? {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(s) => panic!("{s}: give a number of pods, not a percentage"),
        }
    }

    #[test]
    fn each_kustomization_applies_every_other_file_of_its_folder() {
        for dir in DEPLOY_DIRS {
            let kustomization = kustomization(dir);
            let listed: BTreeSet<String> = kustomization
                .resources
                .iter()
                .filter(|r| !r.starts_with(".."))
                .cloned()
                .chain(
                    kustomization
                        .config_map_generator
                        .iter()
                        .flat_map(|g| g.files.iter().cloned()),
                )
                .collect();
            let entries: BTreeSet<String> = std::fs::read_dir(repo().join(dir))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name != "kustomization.yaml")
                .collect();
            let expected: BTreeSet<String> = match dir {
                // deploy/ itself: its base only (an overlay inside it would be a cycle).
                "deploy" => BTreeSet::from(["base".to_owned()]),
                _ => entries,
            };
            assert_eq!(listed, expected, "{dir}/kustomization.yaml");
        }
        assert_eq!(kustomization("deploy/monitoring").kind, "Component");
        assert_eq!(
            kustomization("deploy/all-namespaces").resources[0],
            "../base",
            "the overlay is of deploy/base"
        );
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
                Manifest::PodDisruptionBudget(_) => "PodDisruptionBudget",
                Manifest::Secret(_) => "Secret",
                Manifest::NetworkPolicy(_) => "NetworkPolicy",
                Manifest::ServiceMonitor(_) => "ServiceMonitor",
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
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "CustomResourceDefinition",
            "ServerPool",
            "Kustomization",
        ] {
            assert!(
                kinds.contains(expected),
                "no {expected} in deploy/ or crds/"
            );
        }
    }

    /// The verbs are those the fake API server saw each command use while it ran
    /// (`operator/api_usage_tests.rs`, `cluster_proxy/api_usage_tests.rs`): a verb the code starts using fails this test until
    /// the Role grants it, and one the Role grants that nothing uses fails it too.
    #[tokio::test]
    async fn each_deployment_runs_as_an_account_granted_exactly_what_its_command_uses() {
        let operator_used = crate::operator::api_usage_tests::permissions().await;
        let proxy_used = crate::cluster_proxy::api_usage_tests::permissions().await;
        let (operator_used, proxy_used) = (permissions(operator_used), permissions(proxy_used));
        let deployed = Deployed::load();
        let names: BTreeSet<&str> = deployed
            .deployments
            .iter()
            .filter_map(|d| d.metadata.name.as_deref())
            .collect();
        assert_eq!(names, BTreeSet::from(["ringlb-operator", "ringlb-proxy"]));

        let mut bound_roles = BTreeSet::new();
        let mut accounts = BTreeSet::new();
        for deployment in &deployed.deployments {
            let name = deployment.metadata.name.as_deref().unwrap();
            let namespace = deployment
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("default");
            let command = args(container(deployment)).first().copied();
            let needed = match command {
                Some("operator") => &operator_used,
                Some("proxy") => &proxy_used,
                other => panic!("{name} runs {other:?}: which permissions does it need?"),
            };
            let pod = pod_spec(deployment);
            assert_ne!(
                pod.automount_service_account_token,
                Some(false),
                "{name} talks to the API"
            );
            let account = pod
                .service_account_name
                .as_deref()
                .unwrap_or_else(|| panic!("{name} runs as the namespace's default account"));
            assert!(
                deployed.service_accounts.iter().any(|sa| {
                    sa.metadata.name.as_deref() == Some(account)
                        && sa.metadata.namespace.as_deref().unwrap_or("default") == namespace
                }),
                "{name}: ServiceAccount {account} is not in deploy/"
            );
            let (granted, used) = deployed.granted_to(account, namespace);
            assert_eq!(
                &granted,
                needed,
                "{name} (`ringlb {}`) runs as {account}",
                command.unwrap()
            );
            bound_roles.extend(used);
            accounts.insert(account);
        }
        assert_eq!(
            accounts.len(),
            2,
            "the operator and the proxy share an account"
        );
        // No Role of deploy/ grants anything this test did not compare.
        let roles: BTreeSet<String> = deployed
            .roles
            .iter()
            .map(|r| format!("Role/{}", r.metadata.name.as_deref().unwrap_or_default()))
            .chain(deployed.cluster_roles.iter().map(|r| {
                format!(
                    "ClusterRole/{}",
                    r.metadata.name.as_deref().unwrap_or_default()
                )
            }))
            .collect();
        assert_eq!(bound_roles, roles);
    }

    #[test]
    fn both_deployments_run_two_hardened_pods_spread_over_nodes() {
        let deployed = Deployed::load();
        let components = [
            ("operator", deployed.operator(), deployed.proxy()),
            ("proxy", deployed.proxy(), deployed.operator()),
        ];
        for (component, deployment, other) in components {
            let name = deployment.metadata.name.as_deref().unwrap();
            let spec = deployment.spec.as_ref().unwrap();
            assert_eq!(spec.replicas, Some(2), "{name}");
            let strategy = spec.strategy.as_ref().expect("a strategy");
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");

            let labels = pod_labels(deployment);
            assert_eq!(labels["app.kubernetes.io/name"], "ringlb", "{name}");
            assert_eq!(labels["app.kubernetes.io/component"], component, "{name}");
            assert!(selects(&spec.selector, labels), "{name}: selector");
            assert!(
                !selects(&spec.selector, pod_labels(other)),
                "{name}'s selector also selects the pods of the other Deployment"
            );

            // Preferred, not required: a one-node cluster (kind) still runs both pods.
            let pod = pod_spec(deployment);
            let anti = pod
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .unwrap_or_else(|| panic!("{name}: no pod anti-affinity"));
            assert!(
                anti.required_during_scheduling_ignored_during_execution
                    .is_none()
            );
            assert!(
                anti.preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .any(|t| {
                        t.pod_affinity_term.topology_key == "kubernetes.io/hostname"
                            && t.pod_affinity_term
                                .label_selector
                                .as_ref()
                                .is_some_and(|s| {
                                    selects(s, labels) && !selects(s, pod_labels(other))
                                })
                    }),
                "{name}: its pods do not prefer different nodes"
            );

            let container = container(deployment);
            assert_eq!(container.image.as_deref(), Some("ringlb:dev"), "{name}");
            assert_eq!(args(container), [component], "{name}");
            assert_eq!(port(container, "ops"), Some(5001), "{name}");
            let ops = IntOrString::String("ops".to_owned());
            assert_eq!(
                http_get(container.liveness_probe.as_ref()),
                Some(("/healthz", &ops)),
                "{name}: liveness"
            );
            assert_eq!(
                http_get(container.readiness_probe.as_ref()),
                Some(("/readyz", &ops)),
                "{name}: readiness"
            );
            let requests = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .unwrap_or_else(|| panic!("{name}: no resource requests"));
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{name}"
            );
            let env = env(container);
            assert_eq!(
                field_ref(&env, "RINGLB_NAMESPACE"),
                Some("metadata.namespace"),
                "{name}"
            );

            let pod_security = pod.security_context.as_ref().unwrap();
            assert_eq!(pod_security.run_as_non_root, Some(true), "{name}");
            assert!(pod_security.seccomp_profile.is_some(), "{name}");
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
            let dropped = security.capabilities.as_ref().and_then(|c| c.drop.as_ref());
            assert_eq!(dropped, Some(&vec!["ALL".to_owned()]), "{name}");
        }
    }

    #[test]
    fn the_proxy_serves_the_demo_pool_and_loses_no_request_to_a_rollout_or_a_deletion() {
        let deployed = Deployed::load();
        let proxy = deployed.proxy();
        let rolling = proxy
            .spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("ringlb-proxy: rollingUpdate");
        // A new proxy is Ready before an old one stops.
        assert_eq!(
            int(rolling.max_unavailable.as_ref()),
            Some(0),
            "maxUnavailable"
        );
        assert!(
            int(rolling.max_surge.as_ref()).is_some_and(|n| n >= 1),
            "maxSurge"
        );

        let container = container(proxy);
        assert_eq!(port(container, "http"), Some(5000));
        let env = env(container);
        let pool = env["RINGLB_POOL"].value.as_deref();
        assert_eq!(pool, Some("demo"));
        assert!(
            deployed
                .pools
                .iter()
                .any(|p| p.metadata.name.as_deref() == pool),
            "the proxy's pool is not in deploy/"
        );
        // It may write its own pool only: every rule that lets it patch (or get) a
        // ServerPool names that pool.
        let role = deployed
            .roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("ringlb-proxy"))
            .unwrap();
        let pool_rules: Vec<_> = role
            .rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|res| res == "serverpools"))
            .collect();
        for rule in &pool_rules {
            if rule.verbs.iter().any(|v| v == "patch" || v == "get") {
                assert_eq!(
                    rule.resource_names.as_deref(),
                    Some(&[pool.unwrap().to_owned()][..]),
                    "the proxy may patch every ServerPool"
                );
            }
        }
        // (Its token: `no_token_is_committed_and_each_proxy_reads_the_one_made_for_its_pool`.)

        // Deleting a proxy: it keeps serving while it leaves the Service's endpoints
        // (the kubelet sleeps: the image has no shell), then drains on SIGTERM, all
        // within the grace period.
        let pre_stop = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .expect("ringlb-proxy: no preStop hook");
        assert!(
            pre_stop.exec.is_none(),
            "the image is FROM scratch: nothing to exec"
        );
        let sleep = pre_stop.sleep.as_ref().expect("preStop sleep").seconds;
        assert!(
            sleep >= 3,
            "preStop sleeps {sleep} s: too short for the endpoints to follow"
        );
        let grace = pod_spec(proxy)
            .termination_grace_period_seconds
            .unwrap_or(30);
        let drain = i64::try_from(DRAIN_TIMEOUT.as_secs()).unwrap();
        assert!(
            grace >= sleep + drain,
            "terminationGracePeriodSeconds {grace} < preStop {sleep} s + drain {drain} s"
        );
    }

    #[test]
    fn the_operator_elects_a_leader_by_pod_name_and_has_time_to_release_the_lease() {
        let deployed = Deployed::load();
        let operator = deployed.operator();
        let container = container(operator);
        let env = env(container);
        assert_eq!(field_ref(&env, "RINGLB_POD_NAME"), Some("metadata.name"));
        if let Some(lease) = env.get("RINGLB_LEASE_NAME") {
            // scripts/e2e-kind.sh reads this Lease.
            assert_eq!(lease.value.as_deref(), Some("ringlb-operator"));
        }
        // The control plane serves no traffic: no proxy settings, no proxy port.
        for name in ["RINGLB_POOL", "RINGLB_LISTEN", "RINGLB_ADMIN_TOKEN"] {
            assert!(!env.contains_key(name), "the operator does not take {name}");
        }
        assert_eq!(port(container, "http"), None);
        assert_eq!(
            container.ports.iter().flatten().count(),
            1,
            "ringlb-operator: only the ops port"
        );
        // On SIGTERM: the pass in progress and the lease release, each bounded by the
        // drain timeout, so that a successor need not wait for the lease to expire.
        let grace = pod_spec(operator)
            .termination_grace_period_seconds
            .unwrap_or(30);
        let drain = i64::try_from(DRAIN_TIMEOUT.as_secs()).unwrap();
        assert!(grace >= 2 * drain, "terminationGracePeriodSeconds {grace}");
    }

    fn service<'a>(deployed: &'a Deployed, name: &str) -> &'a Service {
        deployed
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"))
    }

    /// Service port → the container port of `deployment` it reaches.
    fn service_ports(service: &Service, deployment: &Deployment) -> BTreeMap<i32, Option<i32>> {
        let target = container(deployment);
        service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let to = match &p.target_port {
                    Some(IntOrString::String(name)) => port(target, name),
                    Some(IntOrString::Int(n)) => Some(*n),
                    None => Some(p.port),
                };
                (p.port, to)
            })
            .collect()
    }

    fn service_selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
            .expect("a selector");
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// The traffic goes through `ringlb`; /ring, /dashboard and /metrics through
    /// `ringlb-ops` only, so that exposing the one does not expose the other.
    #[test]
    fn the_traffic_and_the_operations_port_each_have_a_service_to_the_proxies_only() {
        let deployed = Deployed::load();
        for (name, ports) in [
            ("ringlb", BTreeMap::from([(5000, Some(5000))])),
            ("ringlb-ops", BTreeMap::from([(5001, Some(5001))])),
        ] {
            let service = service(&deployed, name);
            assert!(
                service_selects(service, pod_labels(deployed.proxy())),
                "{name}: the proxies"
            );
            assert!(
                !service_selects(service, pod_labels(deployed.operator())),
                "{name}: not the operators"
            );
            assert_eq!(service_ports(service, deployed.proxy()), ports, "{name}");
        }
        assert_eq!(deployed.services.len(), 2);
    }

    /// No token in the repository: each proxy reads the Secret the operator makes for
    /// the pool it serves (`admin_secret.rs`), and starts only once it exists.
    #[test]
    fn no_token_is_committed_and_each_proxy_reads_the_one_made_for_its_pool() {
        let secrets: Vec<String> = all_manifests()
            .into_iter()
            .filter(|(_, m)| matches!(m, Manifest::Secret(_)))
            .map(|(origin, _)| origin)
            .collect();
        assert!(secrets.is_empty(), "Secrets committed: {secrets:?}");

        let deployed = Deployed::load();
        let env = env(container(deployed.proxy()));
        let pool = env["RINGLB_POOL"].value.as_deref().expect("RINGLB_POOL");
        let reference = env["RINGLB_ADMIN_TOKEN"]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("RINGLB_ADMIN_TOKEN from a Secret");
        assert_eq!(
            Some(reference.name.clone()),
            crate::operator::admin_secret::secret_name(pool)
        );
        assert_eq!(reference.key, crate::operator::admin_secret::TOKEN_KEY);
        assert_ne!(
            reference.optional,
            Some(true),
            "a proxy without a token is open"
        );
    }

    /// The replicas take connections from the operator (heartbeats) and the proxies
    /// (traffic), on their port, and from nothing else.
    #[tokio::test]
    async fn only_the_operator_and_the_proxies_reach_the_replicas_and_on_their_port_only() {
        let deployed = Deployed::load();
        let [policy] = deployed.network_policies.as_slice() else {
            panic!("one NetworkPolicy in deploy/base");
        };
        let spec = policy.spec.as_ref().unwrap();
        let pod_selector = spec.pod_selector.as_ref().expect("a pod selector");
        // A replica pod as the operator makes it, whatever its pool and port.
        let runtime = crate::operator::pods::KubeRuntime::new(
            crate::operator::fixtures::FakeApiServer::default().client(),
            "default",
            "any-pool",
            Default::default(),
            crate::operator::pods::PodTemplate {
                image: "example/replica:1".into(),
                port: 8443,
                ..Default::default()
            },
        );
        let name = crate::replica_name::ReplicaName::parse("Server1").unwrap();
        let replica = runtime.pod_manifest(&name, "server1").unwrap();
        let replica_labels = replica.metadata.labels.clone().unwrap();
        assert!(selects(pod_selector, &replica_labels), "the replica pods");
        for deployment in &deployed.deployments {
            assert!(
                !selects(pod_selector, pod_labels(deployment)),
                "{:?} is not a replica",
                deployment.metadata.name
            );
        }
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let [rule] = spec.ingress.as_deref().unwrap_or_default() else {
            panic!("one ingress rule");
        };
        let peers = rule.from.as_deref().unwrap_or_default();
        let admitted = |labels: &BTreeMap<String, String>| {
            peers.iter().any(|peer| {
                peer.namespace_selector.is_none()
                    && peer.ip_block.is_none()
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, labels))
            })
        };
        assert!(admitted(pod_labels(deployed.operator())), "the operator");
        assert!(admitted(pod_labels(deployed.proxy())), "the proxies");
        assert!(
            !admitted(&replica_labels),
            "a replica is not a client of another"
        );
        assert!(!admitted(&BTreeMap::new()), "any other pod");
        let container_port = &replica.spec.unwrap().containers[0].ports.clone().unwrap()[0];
        let ports: Vec<_> = rule.ports.iter().flatten().collect();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[0].port,
            container_port.name.clone().map(IntOrString::String),
            "the replicas' named port"
        );
        assert_eq!(container_port.container_port, 8443);
    }

    /// The overlay's grants, from its files (kustomize's rendering is checked too,
    /// where kubectl runs): the operator's Role keeps the Lease, the ClusterRole
    /// everything else the operator uses, and the operator runs `--all-namespaces`.
    #[tokio::test]
    async fn the_all_namespaces_overlay_grants_the_operator_what_it_uses_in_every_namespace() {
        let operator_used = crate::operator::api_usage_tests::permissions().await;
        let operator_used = permissions(operator_used);
        let overlay = kustomization("deploy/all-namespaces");
        let base = Deployed::load();
        let mut manifests = manifests_of("deploy/base");
        manifests.extend(manifests_of("deploy/all-namespaces"));
        let mut deployed = Deployed::of(manifests);
        // The overlay's patches, applied as kustomize applies a JSON 6902 patch.
        for patch in &overlay.patches {
            let ops: Vec<serde_json::Value> = serde_yaml::from_str(&patch.patch).unwrap();
            for op in ops {
                let (target, path) = (&patch.target, op["path"].as_str().unwrap());
                match (target.kind.as_str(), op["op"].as_str().unwrap(), path) {
                    ("Role", "replace", "/rules") => {
                        let role = deployed
                            .roles
                            .iter_mut()
                            .find(|r| r.metadata.name.as_deref() == Some(&target.name))
                            .unwrap();
                        role.rules = serde_json::from_value(op["value"].clone()).unwrap();
                    }
                    ("Deployment", "add", "/spec/template/spec/containers/0/env/-") => {
                        let deployment = deployed
                            .deployments
                            .iter_mut()
                            .find(|d| d.metadata.name.as_deref() == Some(&target.name))
                            .unwrap();
                        let pod = deployment.spec.as_mut().unwrap().template.spec.as_mut();
                        let env = pod.unwrap().containers[0].env.get_or_insert_default();
                        env.push(serde_json::from_value(op["value"].clone()).unwrap());
                    }
                    other => panic!("a patch this test does not know: {other:?}"),
                }
            }
        }
        if let Some(rendered) = kustomize(&repo().join("deploy/all-namespaces")) {
            let rendered = Deployed::of(rendered);
            let rules = |d: &Deployed| {
                (
                    serde_json::to_value(&d.roles).unwrap(),
                    serde_json::to_value(&d.cluster_roles).unwrap(),
                    serde_json::to_value(env(container(d.operator())).keys().collect::<Vec<_>>())
                        .unwrap(),
                )
            };
            assert_eq!(
                rules(&rendered),
                rules(&deployed),
                "as kustomize renders it"
            );
        }

        let account = pod_spec(deployed.operator())
            .service_account_name
            .clone()
            .unwrap();
        let (granted, used) = deployed.granted_to(&account, "default");
        assert_eq!(granted, operator_used);
        assert_eq!(
            used,
            BTreeSet::from([
                "ClusterRole/ringlb-operator".to_owned(),
                "Role/ringlb-operator".to_owned()
            ])
        );
        let lease = ("coordination.k8s.io".to_owned(), "leases".to_owned());
        let role = deployed
            .roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some("ringlb-operator"))
            .unwrap();
        let mut in_namespace = Permissions::new();
        for rule in role.rules.iter().flatten() {
            add_rule(&mut in_namespace, "Role/ringlb-operator", rule);
        }
        assert_eq!(
            in_namespace.keys().collect::<Vec<_>>(),
            [&lease],
            "the Lease only"
        );
        let [cluster_role] = deployed.cluster_roles.as_slice() else {
            panic!("one ClusterRole");
        };
        let mut everywhere = Permissions::new();
        for rule in cluster_role.rules.iter().flatten() {
            add_rule(&mut everywhere, "ClusterRole/ringlb-operator", rule);
        }
        assert!(
            !everywhere.contains_key(&lease),
            "no Lease in every namespace"
        );
        // The proxy's grants are the base's.
        let proxy_account = pod_spec(base.proxy()).service_account_name.clone().unwrap();
        assert_eq!(
            deployed.granted_to(&proxy_account, "default").0,
            base.granted_to(&proxy_account, "default").0
        );

        // The flag the patch sets is the operator's.
        use clap::CommandFactory;
        let command = crate::cli::Cli::command();
        let flag = command
            .find_subcommand("operator")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_id() == "all_namespaces")
            .unwrap();
        let variable = flag.get_env().unwrap().to_str().unwrap();
        let env = env(container(deployed.operator()));
        assert_eq!(env[variable].value.as_deref(), Some("true"));
    }

    /// The component's ServiceMonitor scrapes both operations Services (and not the
    /// traffic), and its dashboard charts only series that ringlb exports.
    #[test]
    fn the_monitoring_component_scrapes_both_operations_ports_and_charts_real_series() {
        let mut manifests = manifests_of("deploy/base");
        manifests.extend(manifests_of("deploy/monitoring"));
        let deployed = Deployed::of(manifests);
        let [monitor] = deployed.monitors.as_slice() else {
            panic!("one ServiceMonitor");
        };
        let scraped: BTreeSet<&str> = deployed
            .services
            .iter()
            .filter(|s| selects(&monitor.spec.selector, s.metadata.labels.as_ref().unwrap()))
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            scraped,
            BTreeSet::from(["ringlb-ops", "ringlb-operator-ops"])
        );
        let [endpoint] = monitor.spec.endpoints.as_slice() else {
            panic!("one endpoint");
        };
        assert_eq!(endpoint.path, "/metrics");
        for (name, deployment) in [
            ("ringlb-ops", deployed.proxy()),
            ("ringlb-operator-ops", deployed.operator()),
        ] {
            let service = service(&deployed, name);
            let ops = service
                .spec
                .as_ref()
                .unwrap()
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(endpoint.port.as_str()))
                .unwrap_or_else(|| panic!("{name}: no port {}", endpoint.port));
            assert!(service_selects(service, pod_labels(deployment)), "{name}");
            assert_eq!(
                service_ports(service, deployment).get(&ops.port),
                Some(&Some(5001)),
                "{name}: the operations port"
            );
        }
        assert_eq!(monitor.metadata.namespace.as_deref(), Some("default"));

        // The dashboard: JSON, and every series it asks for exported by ringlb.
        let generator = &kustomization("deploy/monitoring").config_map_generator[0];
        assert_eq!(generator.name, "ringlb-dashboard");
        assert_eq!(generator.options["labels"]["grafana_dashboard"], "1");
        let text =
            std::fs::read_to_string(repo().join("deploy/monitoring").join(&generator.files[0]))
                .unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let exported = exported_series();
        let mut charted = BTreeSet::new();
        let panels = dashboard["panels"].as_array().unwrap();
        let mut ids = BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "panel ids are unique"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}: no query", panel["title"]);
            for target in targets {
                charted.extend(series_in(target["expr"].as_str().unwrap()));
            }
        }
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            if let Some(query) = variable["query"]["query"].as_str() {
                charted.extend(series_in(query));
            }
        }
        let unknown: Vec<&String> = charted.difference(&exported).collect();
        assert!(unknown.is_empty(), "not exported by ringlb: {unknown:?}");
        assert!(charted.len() >= 10, "{charted:?}");

        let user = monitoring_with_base();
        let rendered = kustomize(&user);
        std::fs::remove_dir_all(&user).unwrap();
        if let Some(rendered) = rendered {
            let rendered = Deployed::of(rendered);
            assert_eq!(rendered.monitors.len(), 1);
            assert_eq!(rendered.services.len(), 3);
        }
    }

    /// A kustomization of deploy/base with the monitoring component, as a user writes
    /// one (kustomize wants paths below its own folder: a link to deploy/).
    fn monitoring_with_base() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-monitoring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("deploy");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(repo().join("deploy"), &link).unwrap();
        std::fs::write(
            dir.join("kustomization.yaml"),
            "resources: [deploy/base]\ncomponents: [deploy/monitoring]\n",
        )
        .unwrap();
        dir
    }

    /// The sample names of every family the processes register (`# TYPE` lines):
    /// `name_total` of a counter, `name` of a gauge, `name_bucket|_sum|_count` of a
    /// histogram.
    fn exported_series() -> BTreeSet<String> {
        // (A family shows only once it has a series: one of each.)
        let metrics = crate::metrics::Metrics::new();
        let replica = crate::replica_name::ReplicaName::parse("Server1").unwrap();
        metrics.pool_status("ns", "pool", 1, 1, 1);
        metrics.reconciled("ns", "pool", std::time::Duration::ZERO, false);
        metrics.pool_replaced("ns", "pool");
        metrics.pool_backoffs("ns", "pool", 1);
        metrics.responses(&replica).inc();
        metrics.forward_failures(&replica).inc();
        metrics.latency(&replica).observe(0.1);
        metrics.heartbeat_failed("pool", &replica);
        metrics.read_timeout(&replica);
        metrics.admin_change("add");
        let metrics = metrics.encode();
        let mut out = BTreeSet::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            match kind {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
                }
                _ => {
                    out.insert(name.to_owned());
                }
            }
        }
        out
    }

    /// The `ringlb_…` names in a PromQL expression.
    fn series_in(expr: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = expr;
        while let Some(at) = rest.find("ringlb_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn each_deployment_has_a_disruption_budget_that_lets_a_drain_through() {
        let deployed = Deployed::load();
        let components = [
            (deployed.proxy(), deployed.operator()),
            (deployed.operator(), deployed.proxy()),
        ];
        for (deployment, other) in components {
            let name = deployment.metadata.name.as_deref().unwrap();
            let replicas = deployment.spec.as_ref().unwrap().replicas.unwrap_or(1);
            let budgets: Vec<&PodDisruptionBudget> = deployed
                .budgets
                .iter()
                .filter(|b| {
                    let selector = b.spec.as_ref().and_then(|s| s.selector.as_ref());
                    selector.is_some_and(|s| selects(s, pod_labels(deployment)))
                })
                .collect();
            assert_eq!(budgets.len(), 1, "{name}: one PodDisruptionBudget");
            let spec = budgets[0].spec.as_ref().unwrap();
            let selector = spec.selector.as_ref().unwrap();
            assert!(
                !selects(selector, pod_labels(other)),
                "{name}'s budget also counts the other Deployment's pods"
            );
            let min = int(spec.min_available.as_ref());
            let max = int(spec.max_unavailable.as_ref());
            // One pod kept, and at least one eviction allowed at full strength.
            let (kept, evictable) = match (min, max) {
                (Some(min), None) => (min, replicas - min),
                (None, Some(max)) => (replicas - max, max),
                other => panic!("{name}: minAvailable or maxUnavailable, not {other:?}"),
            };
            assert!(kept >= 1, "{name}: a drain may take every pod");
            assert!(evictable >= 1, "{name}: a drain can never evict a pod");
            if name == "ringlb-proxy" {
                assert_eq!(min, Some(1), "{name}: minAvailable 1");
            }
        }
    }
}
