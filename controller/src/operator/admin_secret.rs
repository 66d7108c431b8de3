//! Each pool's admin token: the bearer token its proxies require on `/add` and `/rm`.
//!
//! No token is committed to `deploy/`: the operator creates the Secret
//! `<pool>-admin` (key `token`, 256 random bits) where none exists, owned by the pool
//! so that it goes with it, as CloudNativePG creates its clusters' passwords. One that
//! exists is never read nor changed: bring your own by creating it first, rotate it by
//! replacing it (README, Kubernetes). So the operator needs `create` on Secrets and
//! nothing more: it cannot read any Secret of the namespace, this one included; a
//! create refused with 409 tells it the Secret is there.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::PostParams;
use rand::RngCore;

use super::pods::{is_status, owned_metadata};

/// The key of the token in the Secret (`secretKeyRef.key` in deploy/base/proxy.yaml).
pub const TOKEN_KEY: &str = "token";

/// The name of pool `pool`'s admin Secret, if it can have one (a Secret's name is a
/// DNS subdomain of at most 253 characters).
pub fn secret_name(pool: &str) -> Option<String> {
    let name = format!("{pool}-admin");
    (name.len() <= 253).then_some(name)
}

/// A new random token: 32 random bytes, in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    // The thread's generator: a CSPRNG seeded from the operating system's.
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pool `pool`'s admin Secret holding `token`, owned by the pool.
pub fn admin_secret(pool: &str, owner: &OwnerReference, token: &str) -> Option<Secret> {
    Some(Secret {
        metadata: owned_metadata(secret_name(pool)?, pool, owner),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The operator created the Secret with a new token.
    Created,
    /// A Secret of that name was there already: left as it is.
    Existed,
    /// The pool's name is too long for a Secret name of its own.
    NoName,
}

/// Creates pool `pool`'s admin Secret in `secrets`' namespace unless one exists.
pub async fn ensure(
    secrets: &Api<Secret>,
    pool: &str,
    owner: &OwnerReference,
) -> Result<Ensured, kube::Error> {
    let Some(secret) = admin_secret(pool, owner, &new_token()) else {
        return Ok(Ensured::NoName);
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Ensured::Created),
        Err(error) if is_status(&error, 409) => Ok(Ensured::Existed),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::pods::POOL_LABEL;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "ringlb.dev/v1alpha1".into(),
            kind: "ServerPool".into(),
            name: "demo".into(),
            uid: "uid-demo".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn the_secret_is_named_after_the_pool_owned_by_it_and_holds_a_fresh_token() {
        let secret = admin_secret("demo", &owner(), &new_token()).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-admin"));
        assert_eq!(secret.metadata.owner_references, Some(vec![owner()]));
        assert_eq!(
            secret.metadata.labels.unwrap()[POOL_LABEL],
            "demo",
            "labelled with its pool"
        );
        let token = &secret.data.unwrap()[TOKEN_KEY].0;
        assert_eq!(token.len(), 64, "256 bits in hex");
        assert!(token.iter().all(u8::is_ascii_hexdigit));
        // Two tokens share nothing but chance: 2^-256.
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn a_pool_whose_name_leaves_no_room_has_no_secret() {
        assert_eq!(secret_name(&"p".repeat(247)).unwrap().len(), 253);
        assert_eq!(secret_name(&"p".repeat(248)), None);
        assert!(admin_secret(&"p".repeat(248), &owner(), "t").is_none());
    }
}
