//! TLS on the proxy port (`--tls-cert`, `--tls-key`): ALPN chooses HTTP/2 (`h2`) or
//! HTTP/1.1 for each connection. rustls with the ring provider, the binary's only one
//! (kube's too; nothing may pull aws-lc-rs).
//!
//! The certificate and key are read again when either file changes: each handshake
//! compares the files' modification times and sizes with those of the pair it serves
//! (two `stat`s per handshake, nothing per request). A renewed certificate
//! (cert-manager, certbot) reaches the next handshake, and open connections go on
//! with the one they began with. A pair that does not load — written half-way, or a
//! new certificate beside the old key — leaves the last good pair in place; it is
//! tried again once either file changes again.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::Router;
use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::Proxy;
use super::connection::{self, StopSignal};

/// The certificate chain and private key files, in PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What ALPN offers, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The acceptor of every worker: loads the pair now (an error names the file), and
/// again whenever it changes.
pub fn acceptor(files: &TlsFiles) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let stamp = Stamp::of(files)?;
    let key = load(files, &provider).map_err(io::Error::other)?;
    let resolver = ReloadingCert {
        files: files.clone(),
        provider: provider.clone(),
        current: Mutex::new(Current {
            stamp,
            key,
            failed: None,
        }),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves a client connection on a TLS port: the handshake (within the client header
/// timeout), then HTTP/2 or HTTP/1.1 as ALPN chose. A client that offers no ALPN gets
/// HTTP/1.1. HTTP/1.1 over TLS is served by the general path (hyper and the router).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    router: Router,
    mut stop: StopSignal,
) {
    let Some(acceptor) = proxy.tls.clone() else {
        return;
    };
    let handshake = tokio::time::timeout(
        proxy.settings.client_header_timeout,
        acceptor.accept(stream),
    );
    let stream = tokio::select! {
        biased;
        _ = stop.wait() => return,
        accepted = handshake => match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_elapsed) => return,
        },
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        super::h2::serve(stream, peer, &proxy, router, stop).await;
    } else {
        connection::hand_off(stream, Bytes::new(), peer, &proxy, router, stop).await;
    }
}

/// Serves the pair last loaded, after loading it again if its files changed.
#[derive(Debug)]
struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    /// The files as they were when `key` was loaded from them.
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    /// The files as they were when they last failed to load: not tried again as they are.
    failed: Option<Stamp>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ReloadingCert {
    /// The pair to serve now, loaded again first if its files changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        match Stamp::of(&self.files) {
            Ok(stamp) if stamp != current.stamp && current.failed.as_ref() != Some(&stamp) => {
                match load(&self.files, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        *current = Current {
                            stamp,
                            key,
                            failed: None,
                        };
                    }
                    Err(error) => {
                        tracing::warn!(%error, "TLS certificate not reloaded; serving the previous one");
                        current.failed = Some(stamp);
                    }
                }
            }
            // Unchanged, or failed as it is; or a file is missing for a moment
            // (replaced by a rename): the current pair is served.
            _ => {}
        }
        current.key.clone()
    }
}

/// What tells that a file changed: its modification time and size.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp([(SystemTime, u64); 2]);

impl Stamp {
    fn of(files: &TlsFiles) -> io::Result<Self> {
        let one = |path: &Path| -> io::Result<(SystemTime, u64)> {
            let meta = fs::metadata(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok((meta.modified()?, meta.len()))
        };
        Ok(Self([one(&files.cert)?, one(&files.key)?]))
    }
}

/// Reads the pair and checks that the key is the certificate's.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let cert = files.cert.display();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{cert}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("{cert} and {}: {e}", files.key.display()))?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A certificate for `localhost` and its key, in PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// Writes `text` to `path` with a modification time `at` seconds from now, so that
    /// each write is seen as a change whatever the file system's clock resolution.
    fn write(path: &Path, text: &str, at: u64) {
        fs::write(path, text).unwrap();
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(at))
            .unwrap();
    }

    fn served(resolver: &ReloadingCert) -> Vec<u8> {
        resolver.current().end_entity_cert().unwrap().to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_changed_pair_is_served_once_it_loads_and_the_last_good_one_until_then() {
        let dir = std::env::temp_dir().join(format!("ringlb-tls-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let (a, b) = (pair(), pair());
        write(&files.cert, &a.0, 1);
        write(&files.key, &a.1, 1);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = ReloadingCert {
            files: files.clone(),
            provider: provider.clone(),
            current: Mutex::new(Current {
                stamp: Stamp::of(&files).unwrap(),
                key: load(&files, &provider).unwrap(),
                failed: None,
            }),
        };
        assert!(served(&resolver) == der(&a.0), "pair a expected");

        // The new certificate beside the old key: the old pair goes on.
        write(&files.cert, &b.0, 2);
        assert!(served(&resolver) == der(&a.0), "pair a expected");
        // Its key arrives: the new pair.
        write(&files.key, &b.1, 2);
        assert!(served(&resolver) == der(&b.0), "pair b expected");
        // Half a file, then none: the last good pair, and no error to the client.
        write(&files.cert, &b.0[..b.0.len() / 2], 3);
        assert!(served(&resolver) == der(&b.0), "pair b expected");
        fs::remove_file(&files.cert).unwrap();
        assert!(served(&resolver) == der(&b.0), "pair b expected");
        // Back whole: loaded again.
        write(&files.cert, &a.0, 4);
        write(&files.key, &a.1, 4);
        assert!(served(&resolver) == der(&a.0), "pair a expected");

        // A bad pair at the start is an error that names the file.
        write(&files.key, &b.1, 5);
        let error = acceptor(&files)
            .err()
            .expect("a mismatched pair is refused");
        assert!(error.to_string().contains("cert.pem"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
