//! What the experiments read from a load balancer: `/rep` and `/add` / `/rm` on the
//! proxy port, `/ring` on the operations port.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use super::load::error_chain;

/// The operations port's `GET /ring`, as far as the experiments need it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RingView {
    #[serde(default)]
    pub config: Value,
    /// The replicas the pool keeps alive: N is its length.
    pub desired: Vec<String>,
    pub members: Vec<MemberInfo>,
    #[serde(default)]
    pub replacements: Vec<ReplacementInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its container, when the load balancer runs replicas as containers.
    #[serde(default)]
    pub container: Option<String>,
    pub health: String,
    pub in_ring: bool,
    /// Share of the key space (0..1) when in the ring.
    #[serde(default)]
    pub share: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ReplacementInfo {
    pub failed: String,
    pub replacement: String,
}

impl RingView {
    /// N replicas serve: N desired, and N members in the ring and healthy.
    pub fn serving(&self, n: usize) -> bool {
        self.desired.len() == n && self.healthy_in_ring().count() == n
    }

    pub fn healthy_in_ring(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members
            .iter()
            .filter(|m| m.in_ring && m.health == "healthy")
    }

    /// Key-space share per member in the ring.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        self.members
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.share?)))
            .collect()
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "{} {}{}",
                    m.name,
                    m.health,
                    if m.in_ring { " in ring" } else { "" }
                )
            })
            .collect();
        format!(
            "desired {:?}; members [{}]",
            self.desired,
            members.join(", ")
        )
    }
}

/// A load balancer under test: its proxy URL and, if known, its operations URL.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub http: reqwest::Client,
    pub proxy: String,
    pub ops: Option<String>,
    pub admin_token: Option<String>,
}

/// A JSON answer of the admin API.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub json: Option<Value>,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    pub async fn ring(&self) -> anyhow::Result<RingView> {
        let Some(ops) = &self.ops else {
            bail!("no operations port known (pass --ops-target)");
        };
        let response = self
            .http
            .get(format!("{ops}/ring"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {ops}/ring: {}", error_chain(&e)))?;
        let status = response.status();
        let text = response.text().await.context("GET /ring: body")?;
        if !status.is_success() {
            bail!("GET {ops}/ring answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("GET {ops}/ring: unexpected body {text}"))
    }

    /// Sends a request to the proxy port; the body is parsed as JSON if it is JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {path}: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&body).ok();
        Ok(Answer { status, body, json })
    }

    /// `GET /rep`: the replica names.
    pub async fn replicas(&self) -> anyhow::Result<Vec<String>> {
        let answer = self.call(reqwest::Method::GET, "/rep", None).await?;
        rep_names(&answer).with_context(|| format!("GET /rep → {}: {}", answer.status, answer.body))
    }

    /// Waits (bounded) until N replicas serve; without an operations port, until `/rep`
    /// lists N and a request is answered.
    pub async fn wait_serving(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Option<RingView>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = if self.ops.is_some() {
                match self.ring().await {
                    Ok(view) if view.serving(n) => return Ok(Some(view)),
                    Ok(view) => view.describe(),
                    Err(error) => format!("{error:#}"),
                }
            } else {
                match self.replicas().await {
                    Ok(names) if names.len() == n => {
                        match super::load::get(&self.http, &self.url("/home")).await {
                            super::count::Outcome::Served(_) => return Ok(None),
                            other => format!("GET /home: {other:?}"),
                        }
                    }
                    Ok(names) => format!("/rep lists {names:?}"),
                    Err(error) => format!("{error:#}"),
                }
            };
            if Instant::now() >= deadline {
                bail!("{n} replicas did not serve within {timeout:?}; last seen: {last}");
            }
            // Polling observable state at a fixed pace, bounded by the deadline.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The names in a `/rep`, `/add` or `/rm` answer.
pub fn rep_names(answer: &Answer) -> anyhow::Result<Vec<String>> {
    let json = answer.json.as_ref().context("not JSON")?;
    if answer.status != 200 || json["status"] != "successful" {
        bail!("not a successful answer");
    }
    json["message"]["replicas"]
        .as_array()
        .context("no message.replicas")?
        .iter()
        .map(|r| {
            r.as_str()
                .map(str::to_owned)
                .context("a replica name is not a string")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_view_parses_and_tells_when_n_serve() {
        let view: RingView = serde_json::from_value(serde_json::json!({
            "config": {"algorithm": "maglev"},
            "desired": ["Server2", "Server3", "emergency_1"],
            "members": [
                {"name": "Server2", "address": "127.0.0.1:1", "pid": 11, "health": "healthy", "in_ring": true, "share": 0.34},
                {"name": "Server3", "address": "127.0.0.1:2", "pid": 12, "health": "healthy", "in_ring": true, "share": 0.33},
                {"name": "emergency_1", "address": "127.0.0.1:3", "pid": 13, "health": "starting", "in_ring": false, "share": null},
            ],
            "replacements": [{"failed": "Server1", "replacement": "emergency_1"}],
        }))
        .unwrap();
        assert!(!view.serving(3));
        assert_eq!(view.healthy_in_ring().count(), 2);
        assert_eq!(view.shares().len(), 2);
        assert_eq!(view.replacements[0].replacement, "emergency_1");
        let mut ready = view.clone();
        ready.members[2].health = "healthy".into();
        ready.members[2].in_ring = true;
        assert!(ready.serving(3));
        assert!(!ready.serving(2));
    }

    #[test]
    fn rep_names_reads_the_envelope() {
        let ok = Answer {
            status: 200,
            body: String::new(),
            json: Some(serde_json::json!({
                "message": {"N": 2, "replicas": ["Server1", "Server2"]},
                "status": "successful"
            })),
        };
        assert_eq!(rep_names(&ok).unwrap(), ["Server1", "Server2"]);
        let bad = Answer {
            status: 400,
            body: String::new(),
            json: Some(serde_json::json!({"message": "<Error> …", "status": "failure"})),
        };
        assert!(rep_names(&bad).is_err());
    }
}
