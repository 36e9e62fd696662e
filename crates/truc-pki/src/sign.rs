//! Signing and verifying envelope bytes.
//!
//! The signer signs the exact header bytes with its agency key; verifiers check
//! those bytes, the signature, and that the signer certificate chains to the signing
//! CA and names an agency. Nobody re-serializes what was signed.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair},
};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, TrustAnchor, UnixTime,
};
use truc_core::OrganId;
use webpki::{CertRevocationList, EndEntityCert, KeyPurposeIdIter};

use crate::{
    PkiError,
    identity::{Identity, cert_info},
    load_certs, load_key,
};

/// Signatures made and signatures checked (each public-key operation,
/// whatever the outcome) by the signers and verifiers that share it: a node
/// gives its own to all of its keys and verifiers, so that its figures stay
/// its own where several nodes share a process (`truc demo`, tests). What
/// every document costs in public-key work, the part of the CPU that no
/// storage or transport change removes.
#[derive(Debug, Clone, Default)]
pub struct SignatureCounter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    made: AtomicU64,
    checked: AtomicU64,
}

impl SignatureCounter {
    /// (made, checked) since the counter was made.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.made.load(Ordering::Relaxed),
            self.0.checked.load(Ordering::Relaxed),
        )
    }

    fn made(&self) {
        self.0.made.fetch_add(1, Ordering::Relaxed);
    }

    fn checked(&self) {
        self.0.checked.fetch_add(1, Ordering::Relaxed);
    }
}

/// Signature algorithms on the native path. SHA-1 is never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, ASN.1 DER signature: what truc signs with.
    EcdsaP256Sha256,
    Ed25519,
    RsaPkcs1Sha256,
    RsaPssSha256,
}

/// Why a signature was refused. Every variant but `NotNow` is a reason to refuse the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signer certificate")]
    NoSigner,
    #[error("unsupported signature algorithm, or one that does not fit the signer's key")]
    UnsupportedAlgorithm,
    #[error("signer certificate is malformed: {0}")]
    MalformedCertificate(String),
    #[error("signer certificate is not trusted by the signing ca: {0}")]
    Untrusted(String),
    /// Cannot be decided here now, for a reason of this node's own: its
    /// revocation list for the (trusted) issuer is past its next update, or it
    /// has none. Waiting for a fresh list may settle it, unlike the other
    /// errors. (A certificate that starts after this node's clock is refused:
    /// deferring it would let anyone hold a link with a future-dated one.)
    #[error("signer certificate cannot be checked here now: {0}")]
    NotNow(String),
    #[error("signature does not match the signed bytes")]
    BadSignature,
}

/// What a valid signature proves: who signed (an agency or a node), with which
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub identity: Identity,
    /// Subject of the signer certificate, for display.
    pub subject: String,
}

impl Verified {
    /// The agency that signed, if an agency did.
    pub fn organ(&self) -> Option<&OrganId> {
        match &self.identity {
            Identity::Organ(o) => Some(o),
            _ => None,
        }
    }
}

/// A signature and what a verifier needs to check it.
#[derive(Debug, Clone)]
pub struct Signature {
    pub bytes: Vec<u8>,
    pub algorithm: Algorithm,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
}

/// A signing key and its certificate: an agency's (held only on its edge), or a
/// node's own transport key (for the receipts a hub or relay signs).
pub struct Signer {
    identity: Identity,
    key: EcdsaKeyPair,
    chain: Vec<Vec<u8>>,
    rng: SystemRandom,
    counter: SignatureCounter,
}

/// Most signers are agencies.
pub type AgencySigner = Signer;

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads an agency signer; the certificate must name `organ` and match the key.
    pub fn load(organ: &OrganId, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Self::load_for(&Identity::Organ(organ.clone()), cert, key)
    }

    /// Loads a signer whose certificate must name `identity` and match the key.
    pub fn load_for(identity: &Identity, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let chain = load_certs(cert)?;
        let key_der = load_key(key)?;
        Self::from_der_for(identity, chain, key_der).map_err(|e| match e {
            PkiError::Key(reason) => PkiError::Key(format!("{}: {reason}", key.display())),
            PkiError::BadCertificate(reason) => {
                PkiError::BadCertificate(format!("{}: {reason}", cert.display()))
            }
            other => other,
        })
    }

    pub fn from_der(
        organ: &OrganId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, PkiError> {
        Self::from_der_for(&Identity::Organ(organ.clone()), chain, key)
    }

    pub fn from_der_for(
        expected: &Identity,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, PkiError> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(PkiError::Key("expected a PKCS#8 ECDSA P-256 key".into()));
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| PkiError::Key(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| PkiError::BadCertificate("empty certificate chain".into()))?;
        let named = cert_info(leaf)?.identity;
        if &named != expected {
            return Err(PkiError::BadCertificate(format!(
                "certificate names {named:?}, expected {}",
                match expected {
                    Identity::Organ(o) => format!("agency {o}"),
                    Identity::Node(n) => format!("node {n}"),
                    Identity::Operator(n) => format!("operator {n}"),
                }
            )));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err(PkiError::Key("key does not match the certificate".into()));
        }
        Ok(Self {
            identity: expected.clone(),
            key,
            chain: chain.into_iter().map(|c| c.to_vec()).collect(),
            rng,
            counter: SignatureCounter::default(),
        })
    }

    /// Counts this signer's signatures in `counter` (its own until then).
    pub fn counting(mut self, counter: &SignatureCounter) -> Self {
        self.counter = counter.clone();
        self
    }

    /// When the signing certificate expires (Unix seconds), for alerts.
    pub fn not_after(&self) -> i64 {
        self.chain
            .first()
            .and_then(|c| crate::identity::cert_info(c).ok())
            .map(|i| i.not_after)
            .unwrap_or(0)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The agency this signer signs for, if it is an agency's.
    pub fn organ(&self) -> Option<&OrganId> {
        match &self.identity {
            Identity::Organ(o) => Some(o),
            _ => None,
        }
    }

    /// Signs `msg` (the header bytes).
    pub fn sign(&self, msg: &[u8]) -> Result<Signature, PkiError> {
        self.counter.made();
        let sig = self
            .key
            .sign(&self.rng, msg)
            .map_err(|_| PkiError::Key(format!("signing failed for {:?}", self.identity)))?;
        Ok(Signature {
            bytes: sig.as_ref().to_vec(),
            algorithm: Algorithm::EcdsaP256Sha256,
            chain: self.chain.clone(),
        })
    }
}

/// Accepts any well-formed extended key usage: agency certificates from the
/// government CA carry various EKUs; the identity check is the organ URN.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

const CACHE_LIMIT: usize = 4096;

/// Verified chains by digest, with the leaf's `not_after` (Unix seconds).
type VerifiedCache = HashMap<Vec<u8>, (Verified, u64)>;

/// Verifies signatures against a set of CAs: agency signatures against the signing
/// CA, node signatures (receipts of hubs and relays) against the transport CA.
///
/// Chain checks are cached per leaf certificate until the certificate expires, so
/// the common case costs one signature verification.
#[derive(Clone)]
pub struct SignatureVerifier {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    cache: Arc<Mutex<VerifiedCache>>,
    counter: SignatureCounter,
    /// Revocation lists the signers' chains are checked against (none: no
    /// revocation check). Shared by clones, replaced by [`Self::set_crls`].
    crls: Arc<RwLock<Arc<Vec<CertRevocationList<'static>>>>>,
    /// Bumped by each [`Self::set_crls`]: a check made under older lists is
    /// not cached after the cache was cleared for new ones.
    generation: Arc<AtomicU64>,
    /// Issuers of certificates that could not be checked for want of a
    /// revocation list, with when it last happened (unix s): for an alert.
    unlisted: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
}

/// How long an issuer that lacked a revocation list is remembered after the
/// last signature that needed it (the alert's window is shorter), and how
/// many are kept.
const UNLISTED_KEPT_SECS: u64 = 3600;
const UNLISTED_MAX: usize = 64;

/// The first issuer along the signer's real chain that none of `crls`
/// covers: the CA whose list is missing here; none when every one is covered
/// (a list scoped to part of its CA's certificates, say), as far as can be
/// told. The chain is followed from the leaf (`chain[0]`) through the
/// certificates whose subject is the current one's issuer, as webpki builds
/// it: every such path is tried, and one that ends at a trust anchor is
/// taken first. So a certificate the signer added that is not in its chain,
/// or an intermediate cross-signed by a CA not trusted here, never names its
/// own issuer in the alert.
fn unlisted_issuer(
    chain: &[Vec<u8>],
    crls: &[CertRevocationList<'_>],
    anchors: &[TrustAnchor<'_>],
) -> Option<String> {
    // Bounded as webpki bounds its own search: the first 16 certificates,
    // paths of at most 7, at most 256 paths held or tried.
    let parsed: Vec<_> = chain
        .iter()
        .take(16)
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c)
        })
        .collect();
    parsed.first()?.as_ref()?;
    // Names are compared as webpki compares them: byte for byte.
    let anchored = |c: &x509_parser::certificate::X509Certificate<'_>| {
        let issuer = name_contents(c.issuer().as_raw());
        anchors.iter().any(|a| a.subject.as_ref() == issuer)
    };
    // Depth first from the leaf (a chain is a handful of certificates; a
    // few hundred steps at most): the first path that ends at an anchor,
    // else the first that ends anywhere.
    let (mut anchored_path, mut other) = (None, None);
    let mut stack = vec![vec![0usize]];
    for _ in 0..256 {
        let Some(path) = stack.pop() else { break };
        let Some(c) = path.last().and_then(|&i| parsed[i].as_ref()) else {
            continue;
        };
        if anchored(c) {
            anchored_path = Some(path);
            break;
        }
        let issuer = c.issuer().as_raw();
        let next: Vec<usize> = (0..parsed.len())
            .filter(|i| path.len() < 7 && !path.contains(i))
            .filter(|&i| {
                parsed[i]
                    .as_ref()
                    .is_some_and(|p| p.subject().as_raw() == issuer)
            })
            .collect();
        if next.is_empty() {
            other.get_or_insert_with(|| path.clone());
        }
        if stack.len() + next.len() > 256 {
            break;
        }
        for i in next.into_iter().rev() {
            let mut longer = path.clone();
            longer.push(i);
            stack.push(longer);
        }
    }
    let path = anchored_path.or(other).unwrap_or_else(|| vec![0]);
    path.iter()
        .filter_map(|&i| parsed[i].as_ref())
        .find(|c| {
            let issuer = name_contents(c.issuer().as_raw());
            !crls.iter().any(|l| l.issuer() == issuer)
        })
        .map(|c| c.issuer().to_string())
}

/// A DER Name's contents, without its outer tag and length: how webpki
/// keeps a trust anchor's subject and a list's issuer.
fn name_contents(der: &[u8]) -> &[u8] {
    let header = match der.get(1) {
        Some(&l) if l < 0x80 => 2,
        Some(&l) => 2 + usize::from(l & 0x7f),
        None => return der,
    };
    der.get(header..).unwrap_or(der)
}

/// How long a chain checked against revocation lists stays cached: a list
/// past its next update must fail closed soon after, not at the certificate's
/// end.
const REVOCATION_CACHE_SECS: u64 = 60;

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

impl SignatureVerifier {
    /// Trusts the given signing CA certificates.
    pub fn new(cas: &[CertificateDer<'static>]) -> Result<Self, PkiError> {
        let anchors = cas
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| PkiError::BadCertificate(format!("signing ca: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            anchors: Arc::new(anchors),
            cache: Arc::default(),
            counter: SignatureCounter::default(),
            crls: Arc::default(),
            generation: Arc::default(),
            unlisted: Arc::default(),
        })
    }

    /// Issuers (distinguished names) whose certificates could not be checked
    /// since `since` (unix s) because no revocation list here covers them,
    /// or a CA above them, with when that last happened.
    pub fn unlisted_issuers(&self, since: u64) -> Vec<(String, u64)> {
        self.unlisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, at)| **at >= since)
            .map(|(i, at)| (i.clone(), *at))
            .collect()
    }

    /// Checks signers' chains against `crls` from now on (for every clone of
    /// this verifier): a revoked certificate's signatures are refused, and so
    /// are all of them once a list is past its next update (fail closed), as
    /// on the transport. A certificate whose issuer has no list here is
    /// refused too. Empty: no revocation check. What was checked before is
    /// checked again.
    pub fn set_crls(&self, crls: &[CertificateRevocationListDer<'_>]) -> Result<(), PkiError> {
        let parsed = crls
            .iter()
            .map(|c| webpki::OwnedCertRevocationList::from_der(c).map(CertRevocationList::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::BadCertificate(format!("revocation list: {e:?}")))?;
        *self.crls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(parsed);
        // Issuers lacking a list are noted afresh under the new lists.
        self.unlisted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        cache.clear();
        Ok(())
    }

    /// Counts this verifier's checks in `counter` (its own until then).
    pub fn counting(mut self, counter: &SignatureCounter) -> Self {
        self.counter = counter.clone();
        self
    }

    pub fn from_file(path: &Path) -> Result<Self, PkiError> {
        Self::new(&load_certs(path)?)
    }

    /// Checks `signature` over `msg` and returns the agency that made it.
    pub fn verify(
        &self,
        msg: &[u8],
        signature: &[u8],
        algorithm: Algorithm,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<Verified, VerifyError> {
        let leaf_der = chain.first().ok_or(VerifyError::NoSigner)?;
        let leaf_cert = CertificateDer::from(leaf_der.as_slice());
        let leaf = EndEntityCert::try_from(&leaf_cert)
            .map_err(|e| VerifyError::MalformedCertificate(e.to_string()))?;
        // A chain this node cannot decide on now still needs a good signature
        // to be worth waiting for: a bad one is refused for good.
        let chain_checked = self.verify_chain(&leaf, chain, now);
        if let Err((e, _)) = &chain_checked
            && !matches!(e, VerifyError::NotNow(_))
        {
            return Err(e.clone());
        }
        let alg: &dyn rustls::pki_types::SignatureVerificationAlgorithm = match algorithm {
            Algorithm::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
            Algorithm::Ed25519 => webpki::ring::ED25519,
            Algorithm::RsaPkcs1Sha256 => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RsaPssSha256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        };
        self.counter.checked();
        leaf.verify_signature(alg, msg, signature)
            .map_err(|e| match e {
                webpki::Error::InvalidSignatureForPublicKey => VerifyError::BadSignature,
                // The algorithm the envelope names does not fit the key.
                _ => VerifyError::UnsupportedAlgorithm,
            })?;
        self.noted(chain_checked, now)
    }

    /// A chain check's answer, with the issuer that lacked a revocation list
    /// (if that was why) noted for [`Self::unlisted_issuers`]: only for a
    /// signature that checked, so that replayed certificates under forged
    /// signatures raise nothing.
    fn noted(
        &self,
        checked: Result<Verified, (VerifyError, Option<String>)>,
        now: UnixTime,
    ) -> Result<Verified, VerifyError> {
        checked.map_err(|(e, unlisted)| {
            if let Some(issuer) = unlisted {
                let since = now.as_secs().saturating_sub(UNLISTED_KEPT_SECS);
                let mut m = self.unlisted.lock().unwrap_or_else(|p| p.into_inner());
                m.retain(|_, at| *at >= since);
                // Bounded: a few CAs in practice (each reached a trusted
                // anchor to get here).
                if m.len() < UNLISTED_MAX || m.contains_key(&issuer) {
                    m.insert(issuer, now.as_secs());
                }
            }
            e
        })
    }

    /// The signer's chain alone, not the signature: for bytes this process
    /// signed a moment ago with a key that [`Signer`] checked against the leaf
    /// when it was loaded. The chain, its validity at `now` and the identity are
    /// checked as by [`verify`](Self::verify).
    pub fn verify_own(&self, chain: &[Vec<u8>], now: UnixTime) -> Result<Verified, VerifyError> {
        let leaf_der = chain.first().ok_or(VerifyError::NoSigner)?;
        let leaf_cert = CertificateDer::from(leaf_der.as_slice());
        let leaf = EndEntityCert::try_from(&leaf_cert)
            .map_err(|e| VerifyError::MalformedCertificate(e.to_string()))?;
        let checked = self.verify_chain(&leaf, chain, now);
        self.noted(checked, now)
    }

    /// The chain's check; an error comes with the issuer no revocation list
    /// here covers, when that is why.
    fn verify_chain(
        &self,
        leaf: &EndEntityCert<'_>,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<Verified, (VerifyError, Option<String>)> {
        let key: Vec<u8> = chain.concat();
        let cache_key = ring::digest::digest(&ring::digest::SHA256, &key)
            .as_ref()
            .to_vec();
        if let Ok(cache) = self.cache.lock()
            && let Some((v, not_after)) = cache.get(&cache_key)
            && now.as_secs() <= *not_after
        {
            return Ok(v.clone());
        }
        let intermediates: Vec<CertificateDer<'_>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let generation = self.generation.load(Ordering::SeqCst);
        let crls = self.crls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
        // As on the transport: the whole chain, unknown status refused, a
        // list past its next update refused.
        let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
            .ok()
            .map(|b| {
                b.with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build()
            });
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            now,
            AnyEku,
            revocation,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CrlExpired { next_update, .. } => (
                VerifyError::NotNow(format!(
                    "the revocation list here for its issuer was due for renewal at {} (unix time)",
                    next_update.as_secs()
                )),
                None,
            ),
            webpki::Error::UnknownRevocationStatus => {
                let issuer = unlisted_issuer(chain, &crls, &self.anchors);
                let e = VerifyError::NotNow(format!(
                    "no revocation list here covers {}",
                    issuer.as_deref().map_or_else(
                        || "a CA of its chain".to_owned(),
                        |i| format!("{i}, a CA of its chain")
                    )
                ));
                (e, issuer)
            }
            e => (VerifyError::Untrusted(e.to_string()), None),
        })?;
        let info = cert_info(&chain[0])
            .map_err(|e| (VerifyError::MalformedCertificate(e.to_string()), None))?;
        // webpki leaves an end entity's key usage to the caller: a key usage
        // that names neither signing use (an encryption-only certificate)
        // does not sign documents.
        if !info.may_sign {
            return Err((
                VerifyError::Untrusted(
                    "the certificate's key usage allows neither digitalSignature nor nonRepudiation"
                        .into(),
                ),
                None,
            ));
        }
        let verified = Verified {
            identity: info.identity,
            subject: info.subject,
        };
        if let Ok(mut cache) = self.cache.lock()
            && self.generation.load(Ordering::SeqCst) == generation
        {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            let mut until = info.not_after.max(0) as u64;
            if !crls.is_empty() {
                until = until.min(now.as_secs() + REVOCATION_CACHE_SECS);
            }
            cache.insert(cache_key, (verified.clone(), until));
        }
        Ok(verified)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        DistinguishedName, DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    use super::*;

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        p.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        p
    }

    /// A self-signed CA named `cn`, with a fresh key.
    fn root_ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
        CertifiedIssuer::self_signed(ca_params(cn), KeyPair::generate().unwrap()).unwrap()
    }

    /// A CA named `cn` under `by`, with a fresh key.
    fn sub_ca(cn: &str, by: &CertifiedIssuer<'_, KeyPair>) -> CertifiedIssuer<'static, KeyPair> {
        CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().unwrap(), by).unwrap()
    }

    fn crl_of(ca: &CertifiedIssuer<'_, KeyPair>) -> CertificateRevocationListDer<'static> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - Duration::days(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(ca)
        .unwrap()
        .der()
        .clone()
    }

    /// A signer under root → intermediate, whose envelope chain carries a
    /// certificate from another CA before its intermediate. With a list for
    /// the intermediate only, the CA lacking one is the root: the alert and
    /// the refusal name it, not the stray certificate's issuer.
    #[test]
    fn the_unlisted_issuer_is_found_along_the_real_chain() {
        let root = root_ca("Root CA");
        let inter = sub_ca("Intermediate CA", &root);
        let stray = sub_ca("Unrelated sub CA", &root_ca("Unrelated CA"));
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "Văn phòng Chính phủ");
        leaf.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        leaf.not_after = OffsetDateTime::now_utc() + Duration::days(30);
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &inter)
            .unwrap();
        let chain = vec![
            leaf.der().to_vec(),
            stray.der().to_vec(),
            inter.der().to_vec(),
        ];

        let v = SignatureVerifier::new(&[root.der().clone()]).unwrap();
        v.set_crls(&[crl_of(&inter)]).unwrap();
        let Err(VerifyError::NotNow(why)) = v.verify_own(&chain, UnixTime::now()) else {
            panic!("a chain with no list for its root's certificates is not decidable now");
        };
        assert!(why.contains("CN=Root CA"), "{why}");
        let noted: Vec<String> = v.unlisted_issuers(0).into_iter().map(|(i, _)| i).collect();
        assert_eq!(noted, vec!["CN=Root CA".to_owned()]);

        // The self-issued root sent along ends the walk rather than loop on
        // itself; every CA listed, no CA is named (none is to blame).
        let looped = vec![
            leaf.der().to_vec(),
            inter.der().to_vec(),
            root.der().to_vec(),
        ];
        let list = |ca: &CertifiedIssuer<'_, KeyPair>| {
            CertRevocationList::from(
                webpki::OwnedCertRevocationList::from_der(crl_of(ca).as_ref()).unwrap(),
            )
        };
        let both = [list(&inter), list(&root)];
        assert_eq!(unlisted_issuer(&looped, &both, &[]), None);
        let anchors = [webpki::anchor_from_trusted_cert(root.der()).unwrap()];
        assert_eq!(unlisted_issuer(&looped, &both, &anchors), None);

        // An intermediate cross-signed by a CA not trusted here, sent first:
        // the path to the trusted root is the one webpki takes, and its
        // root lacks a list, not the other one.
        let inter_key = KeyPair::generate().unwrap();
        let copy = || KeyPair::try_from(inter_key.serialize_der()).unwrap();
        let old_root = root_ca("Old Root CA");
        let by_old =
            CertifiedIssuer::signed_by(ca_params("Intermediate CA"), copy(), &old_root).unwrap();
        let by_root =
            CertifiedIssuer::signed_by(ca_params("Intermediate CA"), copy(), &root).unwrap();
        let crossed = vec![
            leaf.der().to_vec(),
            by_old.der().to_vec(),
            by_root.der().to_vec(),
        ];
        assert_eq!(
            unlisted_issuer(&crossed, &[list(&by_root)], &anchors).as_deref(),
            Some("CN=Root CA")
        );
    }
}
