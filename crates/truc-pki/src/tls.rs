//! rustls configurations for node links: TLS 1.3 only, client certificates required
//! on both sides, ALPN h2, CRLs honoured. Built by hand because tonic's own TLS
//! config allows TLS 1.2 and has no CRLs (STACK.md trap 3).

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};

use crate::{PkiError, load_certs, load_crls, load_key, provider};

/// A node's transport identity and what it trusts.
#[derive(Debug, Clone)]
pub struct TransportMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl TransportMaterial {
    /// Loads the transport CA, this node's certificate chain and key, and CRLs.
    pub fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        crls: &[impl AsRef<Path>],
    ) -> Result<Self, PkiError> {
        let mut all_crls = Vec::new();
        for path in crls {
            all_crls.extend(load_crls(path.as_ref())?);
        }
        Ok(Self {
            ca: load_certs(ca)?,
            chain: load_certs(cert)?,
            key: Arc::new(load_key(key)?),
            crls: all_crls,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| PkiError::BadCertificate(format!("transport ca: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side of a link: TLS 1.3, a client certificate from the transport CA required.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        self.server_config_for(true, &[b"h2"])
    }

    /// Server side of an operator port (admin gRPC, dashboard, metrics): TLS 1.3
    /// with this node's certificate; a client certificate from the transport CA is
    /// checked when presented but not required, so that a browser can reach the
    /// login page. Each request is then authorized by the identity it carries.
    pub fn operator_server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        self.server_config_for(false, &[b"h2", b"http/1.1"])
    }

    fn server_config_for(
        &self,
        client_cert_required: bool,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, PkiError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .with_crls(self.crls.clone())
            // A CRL past its next update fails closed (DESIGN §8.5: stale CRL).
            .enforce_revocation_expiration();
        if !client_cert_required {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// Client side of a link: TLS 1.3, presents this node's certificate, checks the
    /// server against the transport CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider())
                .with_crls(self.crls.clone())
                // A CRL past its next update fails closed (DESIGN §8.5: stale CRL).
                .enforce_revocation_expiration()
                .build()
                .map_err(|e| PkiError::Verifier(e.to_string()))?;
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}
