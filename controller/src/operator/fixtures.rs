//! Test fixture: a stateful in-memory Kubernetes API server.
//!
//! It keeps objects of any namespaced resource with resourceVersions, answers get,
//! list (label and field selectors), watch (from a resourceVersion, then live),
//! create, merge/apply patches (with a resourceVersion precondition; `/status`
//! patches only the status), and delete; and it records every request (method, path,
//! query, body, caller, time), so that a test can assert each call a component made,
//! in order, or say which verbs it was seen using (see [`FakeApiServer::permissions`]).
//!
//! A test scripts what goes wrong: errors for a time or for the next few requests
//! ([`FakeApiServer::fail`], [`FakeApiServer::fail_next`]), requests held unanswered
//! ([`FakeApiServer::hold`]), watches that go quiet. Several clients can share one
//! server under names of their own ([`FakeApiServer::caller`]), as two operators
//! share the API server: each call and change says whose it was, and a fault or hold
//! can be one caller's alone.
//!
//! Deleting an object deletes, at once, every object whose `ownerReferences` name its
//! uid (garbage collection, as the API server's background propagation ends).
//!
//! Approximations, on purpose: every patch is a JSON merge patch (server-side apply
//! included, without field ownership); a delete removes the object at once (no
//! grace period); garbage collection is immediate.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the server got.
#[derive(Clone, Debug)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The request's body (JSON or YAML), `null` without one.
    pub body: Value,
    /// Whose client sent it (see [`FakeApiServer::caller`]; `""` for [`FakeApiServer::client`]'s).
    pub by: String,
    /// When it arrived, on tokio's clock.
    pub at: tokio::time::Instant,
}

/// One change the server made, as a watch sees it, with whose request made it.
#[derive(Clone, Debug)]
pub struct Change {
    pub collection: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for `DELETED`).
    pub object: Value,
    /// The caller whose request made it (`""` for the test's own `put` and deletes).
    pub by: String,
    /// When, on tokio's clock.
    pub at: tokio::time::Instant,
}

/// The requests a fault or a hold applies to: `method`, a path ending with
/// `path_suffix`, and from `caller` only when set.
#[derive(Clone, Debug)]
struct Requests {
    method: String,
    path_suffix: String,
    caller: Option<String>,
}

impl Requests {
    fn matches(&self, method: &str, path: &str, by: &str) -> bool {
        self.method == method
            && path.ends_with(self.path_suffix.as_str())
            && self.caller.as_deref().is_none_or(|caller| caller == by)
    }
}

/// Requests answered with an error instead, while `until` is ahead (of tokio's
/// clock) and `left` (when counted) is not used up.
struct Fault {
    requests: Requests,
    code: u16,
    until: Option<tokio::time::Instant>,
    left: Option<usize>,
}

/// (API group, resource, verb), as RBAC names them.
pub type Permission = (String, String, String);

#[derive(Default)]
struct State {
    /// Collection path (`/api/v1/namespaces/default/pods`) → name → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Every change, in order, with its resourceVersion.
    history: Vec<(u64, Change)>,
    version: u64,
    calls: Vec<ApiCall>,
    faults: Vec<Fault>,
    /// Requests held unanswered until released.
    holds: Vec<(Requests, tokio::sync::watch::Receiver<bool>)>,
    /// Watches deliver nothing more, as over a half-open connection.
    stalled: bool,
}

#[derive(Clone)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    /// The latest resourceVersion: watches wake on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Whose this handle is (see [`FakeApiServer::caller`]); `None`: the test's own.
    caller: Option<Arc<str>>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: tokio::sync::watch::channel(0).0,
            caller: None,
        }
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

impl FakeApiServer {
    /// A client of this server, in namespace `default`.
    pub fn client(&self) -> Client {
        Client::new(self.clone(), "default")
    }

    /// A handle on the same server whose [`client`](Self::client) sends as `name`:
    /// its calls and the changes they make are recorded as `name`'s, and the faults
    /// and holds set through it apply to `name`'s requests alone.
    pub fn caller(&self, name: &str) -> Self {
        Self {
            caller: Some(name.into()),
            ..self.clone()
        }
    }

    fn by(&self) -> String {
        self.caller.as_deref().unwrap_or_default().to_owned()
    }

    fn requests(&self, method: &str, path_suffix: &str) -> Requests {
        Requests {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            caller: self.caller.as_deref().map(str::to_owned),
        }
    }

    /// Stores `object` (as a client's create would), under `collection`.
    pub fn put(&self, collection: &str, object: Value) {
        let mut state = self.state.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let existed = state
            .objects
            .get(collection)
            .is_some_and(|c| c.contains_key(&name));
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        self.store(&mut state, collection, &name, object, kind, &self.by());
    }

    /// While `on`, every open watch that has an event to send stalls for good, as
    /// over a half-open connection (its client sees nothing, not even an end);
    /// watches made after it is off are served again.
    pub fn stall_watches(&self, on: bool) {
        self.state.lock().unwrap().stalled = on;
    }

    /// Deletes object `name` of `collection` at once, as a delete with grace
    /// period 0 ends (nothing it owns is collected).
    pub fn delete_now(&self, collection: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        if remove(&mut state, collection, name, &self.by()).is_some() {
            self.changed.send_replace(state.version);
        }
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.objects.get(collection)?.get(name).cloned()
    }

    /// The names of the objects of `collection`.
    pub fn names(&self, collection: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(collection)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Answers `method` requests whose path ends with `path_suffix` with HTTP
    /// `code` for the next `duration` (of tokio's clock, so paused tests can use it).
    pub fn fail(&self, method: &str, path_suffix: &str, code: u16, duration: Duration) {
        self.add_fault(Fault {
            requests: self.requests(method, path_suffix),
            code,
            until: Some(tokio::time::Instant::now() + duration),
            left: None,
        });
    }

    /// Answers the next `times` `method` requests whose path ends with `path_suffix`
    /// with HTTP `code` (`usize::MAX`: every one): e.g. a write refused with 409 as
    /// if someone had changed the object first.
    pub fn fail_next(&self, method: &str, path_suffix: &str, code: u16, times: usize) {
        self.add_fault(Fault {
            requests: self.requests(method, path_suffix),
            code,
            until: None,
            left: Some(times),
        });
    }

    fn add_fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Holds `method` requests whose path ends with `path_suffix` (recorded, not yet
    /// answered: a call in flight) until the returned sender sends `true` or is dropped.
    pub fn hold(&self, method: &str, path_suffix: &str) -> tokio::sync::watch::Sender<bool> {
        let (release, released) = tokio::sync::watch::channel(false);
        let requests = self.requests(method, path_suffix);
        self.state.lock().unwrap().holds.push((requests, released));
        release
    }

    /// Every change so far, in order: (collection, `ADDED`/`MODIFIED`/`DELETED`, object).
    pub fn history(&self) -> Vec<(String, &'static str, Value)> {
        self.changes()
            .into_iter()
            .map(|c| (c.collection, c.kind, c.object))
            .collect()
    }

    /// Every change so far, in order, with whose it was and when.
    pub fn changes(&self) -> Vec<Change> {
        let state = self.state.lock().unwrap();
        state.history.iter().map(|(_, c)| c.clone()).collect()
    }

    pub fn calls(&self) -> Vec<ApiCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// What the requests so far needed, as RBAC verbs: GET of one object is `get`,
    /// of a collection `list`, with `watch=true` `watch`; POST `create`; PATCH
    /// `patch`; PUT `update`; DELETE `delete` (`deletecollection` without a name).
    pub fn permissions(&self) -> BTreeSet<Permission> {
        self.calls()
            .iter()
            .filter_map(|call| {
                let target = Target::parse(&call.path)?;
                let watch =
                    query_param(&call.query, "watch").is_some_and(|w| w == "true" || w == "1");
                let verb = match (call.method.as_str(), target.name.is_some()) {
                    ("GET", true) => "get",
                    ("GET", false) if watch => "watch",
                    ("GET", false) => "list",
                    ("POST", _) => "create",
                    ("PATCH", _) => "patch",
                    ("PUT", _) => "update",
                    ("DELETE", true) => "delete",
                    ("DELETE", false) => "deletecollection",
                    _ => return None,
                };
                let resource = match &target.subresource {
                    Some(sub) => format!("{}/{sub}", target.resource),
                    None => target.resource.clone(),
                };
                Some((target.group.clone(), resource, verb.to_owned()))
            })
            .collect()
    }

    async fn handle(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes)
            .or_else(|_| serde_yaml::from_slice(&bytes))
            .unwrap_or(Value::Null);
        let by = self.by();
        let hold = {
            let mut state = self.state.lock().unwrap();
            state.calls.push(ApiCall {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
                by: by.clone(),
                at: tokio::time::Instant::now(),
            });
            state
                .holds
                .iter()
                .find(|(requests, _)| requests.matches(&method, &path, &by))
                .map(|(_, released)| released.clone())
        };
        if let Some(mut released) = hold {
            let _ = released.wait_for(|released| *released).await;
        }
        if let Some(code) = self.fault(&method, &path, &by) {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = match code {
                404 => "NotFound",
                409 => "Conflict",
                _ => "InternalError",
            };
            return answer(status, status_body(code, reason, "injected fault"));
        }
        let Some(target) = Target::parse(&path) else {
            return answer(StatusCode::NOT_FOUND, status_body(404, "NotFound", &path));
        };
        let watch = query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1");
        match (method.as_str(), &target.name) {
            ("GET", None) if watch => self.watch(&target, &query),
            ("GET", None) => self.list(&target, &query),
            ("GET", Some(name)) => match self.get(&target.collection, name) {
                Some(object) => answer(StatusCode::OK, object),
                None => not_found(name),
            },
            ("POST", None) => self.create(&target, body),
            ("PATCH", Some(name)) => {
                let apply = query.contains("fieldManager") && body.get("apiVersion").is_some();
                self.patch(&target, name, body, apply)
            }
            ("DELETE", Some(name)) => self.delete(&target, name),
            _ => answer(
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed", &method),
            ),
        }
    }

    /// The code of the first fault that applies to this request, if any (and one
    /// use of it, if counted).
    fn fault(&self, method: &str, path: &str, by: &str) -> Option<u16> {
        let mut state = self.state.lock().unwrap();
        let now = tokio::time::Instant::now();
        state
            .faults
            .retain(|f| f.until.is_none_or(|until| until > now) && f.left != Some(0));
        let fault = state
            .faults
            .iter_mut()
            .find(|f| f.requests.matches(method, path, by))?;
        if let Some(left) = &mut fault.left {
            *left -= 1;
        }
        Some(fault.code)
    }

    fn list(&self, target: &Target, query: &str) -> Response<ResponseBody> {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(collection, _)| target.covers(collection))
            .flat_map(|(_, c)| c.values())
            .filter(|o| selected(o, query))
            .cloned()
            .collect();
        answer(
            StatusCode::OK,
            json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    /// The changes after `resourceVersion`, then every change as it happens.
    fn watch(&self, target: &Target, query: &str) -> Response<ResponseBody> {
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let server = self.clone();
        let target = Arc::new(target.clone());
        let query = query.to_owned();
        let changed = self.changed.subscribe();
        let events = futures::stream::unfold((from, changed), move |(mut cursor, mut changed)| {
            let (server, target, query) = (server.clone(), target.clone(), query.clone());
            async move {
                loop {
                    let next = {
                        let state = server.state.lock().unwrap();
                        state
                            .history
                            .iter()
                            .find(|(rv, c)| {
                                *rv > cursor
                                    && target.covers(&c.collection)
                                    && selected(&c.object, &query)
                            })
                            .map(|(rv, c)| (*rv, c.kind, c.object.clone()))
                            .or_else(|| {
                                // Skip what does not match, up to the latest version.
                                cursor = cursor.max(state.version);
                                None
                            })
                    };
                    if server.state.lock().unwrap().stalled {
                        std::future::pending::<()>().await;
                    }
                    if let Some((rv, kind, object)) = next {
                        let mut line =
                            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
                        line.push(b'\n');
                        return Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                            (rv, changed),
                        ));
                    }
                    changed.changed().await.ok()?;
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .body(BodyExt::boxed(StreamBody::new(events)))
            .unwrap()
    }

    fn create(&self, target: &Target, mut object: Value) -> Response<ResponseBody> {
        let mut state = self.state.lock().unwrap();
        if object["metadata"]["name"].as_str().is_none() {
            let prefix = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("object-")
                .to_owned();
            object["metadata"]["name"] = json!(format!("{prefix}{}", state.version + 1));
        }
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        if state
            .objects
            .get(&target.collection)
            .is_some_and(|c| c.contains_key(&name))
        {
            return answer(
                StatusCode::CONFLICT,
                status_body(409, "AlreadyExists", &name),
            );
        }
        object["metadata"]["namespace"] = json!(target.namespace);
        object["metadata"]["uid"] = json!(format!("uid-{name}-{}", state.version + 1));
        let stored = self.store(
            &mut state,
            &target.collection,
            &name,
            object,
            "ADDED",
            &self.by(),
        );
        answer(StatusCode::CREATED, stored)
    }

    fn patch(
        &self,
        target: &Target,
        name: &str,
        patch: Value,
        apply: bool,
    ) -> Response<ResponseBody> {
        let mut state = self.state.lock().unwrap();
        let current = state
            .objects
            .get(&target.collection)
            .and_then(|c| c.get(name))
            .cloned();
        let mut object = match current {
            Some(object) => object,
            // Server-side apply creates what is missing.
            None if apply && target.subresource.is_none() => {
                json!({"metadata": {"name": name, "namespace": target.namespace,
                                    "uid": format!("uid-{name}")}})
            }
            None => return not_found(name),
        };
        if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
            && object["metadata"]["resourceVersion"].as_str() != Some(expected)
        {
            return answer(
                StatusCode::CONFLICT,
                status_body(409, "Conflict", "the object has been modified"),
            );
        }
        let mut patch = patch;
        if let Some(map) = patch.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
            if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                metadata.remove("resourceVersion");
            }
            // The status subresource changes only the status, the resource never does.
            if target.subresource.as_deref() == Some("status") {
                map.retain(|key, _| key == "status");
            } else {
                map.remove("status");
            }
        }
        merge(&mut object, &patch);
        let stored = self.store(
            &mut state,
            &target.collection,
            name,
            object,
            "MODIFIED",
            &self.by(),
        );
        answer(StatusCode::OK, stored)
    }

    fn delete(&self, target: &Target, name: &str) -> Response<ResponseBody> {
        let mut state = self.state.lock().unwrap();
        let by = self.by();
        let Some(object) = remove(&mut state, &target.collection, name, &by) else {
            return not_found(name);
        };
        // Garbage collection: the objects it owns go with it (and theirs).
        let mut owners = vec![object["metadata"]["uid"].clone()];
        while let Some(uid) = owners.pop() {
            let owned: Vec<(String, String)> = state
                .objects
                .iter()
                .flat_map(|(collection, objects)| {
                    objects.iter().map(move |(name, o)| (collection, name, o))
                })
                .filter(|(_, _, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                })
                .map(|(collection, name, _)| (collection.clone(), name.clone()))
                .collect();
            for (collection, name) in owned {
                if let Some(gone) = remove(&mut state, &collection, &name, &by) {
                    owners.push(gone["metadata"]["uid"].clone());
                }
            }
        }
        self.changed.send_replace(state.version);
        answer(StatusCode::OK, object)
    }

    fn store(
        &self,
        state: &mut State,
        collection: &str,
        name: &str,
        mut object: Value,
        kind: &'static str,
        by: &str,
    ) -> Value {
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state
            .objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name.to_owned(), object.clone());
        record(state, version, collection, kind, &object, by);
        self.changed.send_replace(version);
        object
    }
}

impl tower_service::Service<Request<Body>> for FakeApiServer {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move { Ok(server.handle(request).await) })
    }
}

/// What a request path names.
#[derive(Clone)]
struct Target {
    group: String,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
    /// The path up to the resource: where its objects are kept. Without a namespace
    /// (`/api/v1/pods`), a list or watch of every namespace's.
    collection: String,
    /// The collection's path before and after `/namespaces/NS`; the namespace is
    /// `None` for a request of every namespace.
    prefix: String,
    namespace: Option<String>,
}

impl Target {
    /// `/api/v1[/namespaces/NS]/RES[/NAME[/SUB]]` or
    /// `/apis/GROUP/VERSION[/namespaces/NS]/RES[/NAME[/SUB]]`.
    fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, head, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", 2, rest),
            ["apis", group, _version, rest @ ..] => (*group, 3, rest),
            _ => return None,
        };
        let (namespace, resource, tail) = match rest {
            ["namespaces", namespace, resource, tail @ ..] => (Some(*namespace), *resource, tail),
            // Every namespace's (a name needs a namespace: nothing here is cluster-scoped).
            [resource] => (None, *resource, &[][..]),
            _ => return None,
        };
        let prefix_len = parts.len() - tail.len();
        Some(Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            name: tail.first().map(|s| (*s).to_owned()),
            subresource: tail.get(1).map(|s| (*s).to_owned()),
            collection: format!("/{}", parts[..prefix_len].join("/")),
            prefix: format!("/{}", parts[..head].join("/")),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Whether the objects kept under `collection` are this request's.
    fn covers(&self, collection: &str) -> bool {
        match &self.namespace {
            Some(_) => collection == self.collection,
            None => collection
                .strip_prefix(&self.prefix)
                .and_then(|rest| rest.strip_prefix("/namespaces/"))
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(_, resource)| resource == self.resource),
        }
    }
}

/// Removes one object and records its `DELETED` event.
fn remove(state: &mut State, collection: &str, name: &str, by: &str) -> Option<Value> {
    let object = state.objects.get_mut(collection)?.remove(name)?;
    state.version += 1;
    let version = state.version;
    record(state, version, collection, "DELETED", &object, by);
    Some(object)
}

fn record(
    state: &mut State,
    version: u64,
    collection: &str,
    kind: &'static str,
    object: &Value,
    by: &str,
) {
    let change = Change {
        collection: collection.to_owned(),
        kind,
        object: object.clone(),
        by: by.to_owned(),
        at: tokio::time::Instant::now(),
    };
    state.history.push((version, change));
}

fn answer(status: StatusCode, body: Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(
            serde_json::to_vec(&body).unwrap(),
        ))))
        .unwrap()
}

fn not_found(name: &str) -> Response<ResponseBody> {
    answer(StatusCode::NOT_FOUND, status_body(404, "NotFound", name))
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` matches the query's `labelSelector` and `fieldSelector`
/// (equality terms only, comma-separated: what ringlb sends).
fn selected(object: &Value, query: &str) -> bool {
    let terms = |key: &str| -> Vec<(String, String)> {
        query_param(query, key)
            .unwrap_or_default()
            .split(',')
            .filter_map(|term| {
                let (k, v) = term.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect()
    };
    let labels_match = terms("labelSelector")
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v));
    let fields_match = terms("fieldSelector").iter().all(|(k, v)| {
        let field = k.split('.').fold(object, |value, part| &value[part]);
        field.as_str() == Some(v)
    });
    labels_match && fields_match
}
