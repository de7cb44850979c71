//! TLS for DIMSE (`dicom-ul`'s rustls streams) from PEM files: the archive's CA for a client,
//! a certificate chain and key for our storage SCP. The crypto provider is `ring`, named
//! explicitly so nothing depends on a process-wide default.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::PacsError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PacsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| PacsError::Tls(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| PacsError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PacsError::Tls(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// A client configuration trusting `ca_file` (PEM), or the public web roots without one.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, PacsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in certs(p)? {
                roots
                    .add(c)
                    .map_err(|e| PacsError::Tls(format!("{}: {e}", p.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PacsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A server configuration from a PEM certificate chain and its PEM private key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, PacsError> {
    let chain = certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| PacsError::Tls(format!("{}: {e}", key_file.display())))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PacsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| PacsError::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// ureq's TLS settings for DICOMweb over HTTPS: the CA file when given, else the web roots.
pub fn http_tls(ca_file: Option<&Path>) -> Result<ureq::tls::TlsConfig, PacsError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let mut b = TlsConfig::builder().provider(TlsProvider::Rustls);
    if let Some(p) = ca_file {
        let certs = certs(p)?
            .into_iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect::<Vec<_>>();
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    Ok(b.build())
}
