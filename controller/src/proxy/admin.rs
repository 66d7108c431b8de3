//! The admin API: `GET /rep`, `POST /add`, `DELETE /rm`. Handlers only parse and
//! check the request; the supervisor validates against the pool and applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use super::Proxy;
use super::error::ApiError;
use crate::replica_name::ReplicaName;
use crate::ring::MAX_WEIGHT;

/// Admin bodies are a count and a few names: anything larger is a mistake or abuse.
pub const MAX_ADMIN_BODY: usize = 64 * 1024;

fn rep_body(replicas: &[ReplicaName]) -> Json<Value> {
    Json(json!({
        "message": { "N": replicas.len(), "replicas": replicas },
        "status": "successful",
    }))
}

pub async fn rep(State(proxy): State<Arc<Proxy>>) -> Json<Value> {
    rep_body(&proxy.publisher.view().desired)
}

pub async fn add(
    State(proxy): State<Arc<Proxy>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let change = read_change(&proxy, request).await?;
    let replicas = proxy
        .admin
        .add(change.n, change.hostnames, change.weights)
        .await?;
    Ok(rep_body(&replicas))
}

pub async fn rm(
    State(proxy): State<Arc<Proxy>>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let change = read_change(&proxy, request).await?;
    if !change.weights.is_empty() {
        return Err(ApiError::BadField("/rm takes no 'weights'".into()));
    }
    let replicas = proxy.admin.remove(change.n, change.hostnames).await?;
    Ok(rep_body(&replicas))
}

/// The body of `/add` and `/rm`: `{"n": <integer ≥ 1>, "hostnames": [<string>, …]}`,
/// and for `/add` optionally `"weights": {<hostname>: <integer 1…256>, …}`.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub n: u64,
    pub hostnames: Vec<String>,
    /// Ring weights by hostname; the replicas not named here have weight 1.
    pub weights: BTreeMap<String, u32>,
}

async fn read_change(proxy: &Proxy, request: Request) -> Result<Change, ApiError> {
    let (parts, body) = request.into_parts();
    authorize(proxy.settings.admin_token.as_deref(), &parts.headers)?;
    let bytes =
        super::forward::read_body(body, MAX_ADMIN_BODY, proxy.settings.client_body_timeout).await?;
    parse_change(&bytes)
}

fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if constant_time_eq(presented, token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so response time does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn parse_change(bytes: &[u8]) -> Result<Change, ApiError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::BadField(
            "request body must be a JSON object like {\"n\": 1, \"hostnames\": [\"Server4\"]}"
                .into(),
        ));
    };
    let n = match fields.get("n") {
        None | Some(Value::Null) => return Err(ApiError::BadField("'n' is required".into())),
        Some(n) => n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::BadField(format!("'n' must be an integer of at least 1, got {n}"))
        })?,
    };
    let hostnames = match fields.get("hostnames") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::BadField(format!("'hostnames' must hold strings, got {item}"))
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::BadField(format!(
                "'hostnames' must be a list of strings, got {other}"
            )));
        }
    };
    let weights = match fields.get("weights") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(weights)) => weights
            .iter()
            .map(|(name, weight)| {
                let weight = weight
                    .as_u64()
                    .filter(|w| (1..=u64::from(MAX_WEIGHT)).contains(w))
                    .ok_or_else(|| {
                        ApiError::BadField(format!(
                            "the weight of '{name}' must be an integer from 1 to {MAX_WEIGHT}, got {weight}"
                        ))
                    })?;
                Ok((name.clone(), weight as u32))
            })
            .collect::<Result<_, ApiError>>()?,
        Some(other) => {
            return Err(ApiError::BadField(format!(
                "'weights' must be an object of hostname to weight, got {other}"
            )));
        }
    };
    Ok(Change {
        n,
        hostnames,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<Change, ApiError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn parses_the_original_examples() {
        assert_eq!(
            parse_change(br#"{"n": 2, "hostnames": ["Server4", "Server5"]}"#).unwrap(),
            Change {
                n: 2,
                hostnames: vec!["Server4".into(), "Server5".into()],
                weights: BTreeMap::new(),
            }
        );
        assert_eq!(
            parse_change(br#"{"n": 1}"#).unwrap(),
            Change {
                n: 1,
                hostnames: vec![],
                weights: BTreeMap::new(),
            }
        );
    }

    #[test]
    fn weights_are_hostnames_to_integers_from_1_to_256() {
        let change =
            parse_change(br#"{"n": 2, "hostnames": ["A", "B"], "weights": {"A": 3, "B": 256}}"#);
        assert_eq!(
            change.unwrap().weights,
            BTreeMap::from([("A".into(), 3), ("B".into(), 256)])
        );
        for bad in ["0", "257", "1.5", "\"2\"", "-1", "null"] {
            let body = format!(r#"{{"n": 1, "hostnames": ["A"], "weights": {{"A": {bad}}}}}"#);
            assert!(
                message(parse_change(body.as_bytes()))
                    .contains("the weight of 'A' must be an integer from 1 to 256"),
                "{bad}"
            );
        }
        assert!(
            message(parse_change(br#"{"n": 1, "weights": [2]}"#))
                .contains("'weights' must be an object")
        );
    }

    #[test]
    fn says_what_is_wrong_with_a_body() {
        assert!(message(parse_change(b"not json")).contains("not valid JSON"));
        assert!(message(parse_change(b"[1]")).contains("JSON object"));
        assert!(message(parse_change(b"{}")).contains("'n' is required"));
        for bad_n in ["0", "-1", "1.5", "\"2\"", "true"] {
            let body = format!(r#"{{"n": {bad_n}}}"#);
            assert!(
                message(parse_change(body.as_bytes())).contains("'n' must be an integer"),
                "{bad_n}"
            );
        }
        assert!(
            message(parse_change(br#"{"n": 1, "hostnames": "A"}"#)).contains("list of strings")
        );
        assert!(message(parse_change(br#"{"n": 1, "hostnames": [1]}"#)).contains("hold strings"));
    }

    #[test]
    fn token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(authorize(None, &headers).is_ok());
        assert!(matches!(
            authorize(Some("s3cret"), &headers),
            Err(ApiError::Unauthorized)
        ));
        headers.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(authorize(Some("s3cret"), &headers).is_err());
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorize(Some("s3cret"), &headers).is_ok());
    }
}
