//! A development PKI made with rcgen: the two CAs and their leaves.
//!
//! Production deployments bring their own CAs (the signing CA stands in for the
//! government's special-use CA); everything here exists so that a fresh machine can
//! run real mTLS and real signatures with one command.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use truc_core::{NodeId, OrganId};

use crate::{
    PkiError,
    identity::{NODE_URN, OPERATOR_URN, ORGAN_URN, ROLE_URN, Role},
};

/// A certificate and its private key, PEM encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// A CA able to issue leaves.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// Validity of leaves, and of CAs.
pub const LEAF_DAYS: i64 = 398;
pub const CA_DAYS: i64 = 3650;

fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Key("no randomness".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

fn params(cn: &str, days: i64) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "truc development PKI");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks that run behind (DESIGN: nodes tolerate ±2 h).
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
    p.serial_number = Some(serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn uri(s: String) -> Result<SanType, PkiError> {
    Ok(SanType::URI(s.try_into()?))
}

impl DevCa {
    /// A new self-signed CA named `cn`.
    pub fn generate(cn: &str) -> Result<Self, PkiError> {
        Self::generate_valid(cn, CA_DAYS)
    }

    /// A new self-signed CA valid for `days` from now.
    pub fn generate_valid(cn: &str, days: i64) -> Result<Self, PkiError> {
        let mut p = params(cn, days)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(p, key)?;
        let cert_pem = ca.pem();
        Self::load(&cert_pem, &key_pem)
    }

    /// Reloads a CA from its PEM certificate and key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A CRL listing `serials` (raw big-endian serial numbers), valid for a year.
    pub fn crl(&self, serials: &[Vec<u8>]) -> Result<String, PkiError> {
        self.crl_valid(serials, 365)
    }

    /// As [`crl`](Self::crl), due for its next update in `days` (negative: stale).
    pub fn crl_valid(&self, serials: &[Vec<u8>], days: i64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::days(days.abs() + 1),
            next_update: now + Duration::days(days),
            crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::Superseded),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(&self, p: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// A node certificate: client and server auth, `urn:truc:node:<id>`, DNS names
    /// `<id>` and `localhost` plus `hostnames`, and the loopback addresses.
    pub fn node_cert(&self, node: &NodeId, hostnames: &[String]) -> Result<Issued, PkiError> {
        self.node_cert_valid(node, hostnames, LEAF_DAYS)
    }

    /// As [`node_cert`](Self::node_cert) with a chosen validity (negative: already expired).
    pub fn node_cert_valid(
        &self,
        node: &NodeId,
        hostnames: &[String],
        days: i64,
    ) -> Result<Issued, PkiError> {
        let mut p = params(&format!("truc node {node}"), days)?;
        if days < 0 {
            p.not_before = OffsetDateTime::now_utc() - Duration::days(30);
        }
        self.node_cert_from(node, hostnames, p)
    }

    /// A node certificate that expires `after` from now (tests of what
    /// happens at expiry).
    pub fn node_cert_expiring(
        &self,
        node: &NodeId,
        after: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let mut p = params(&format!("truc node {node}"), 1)?;
        p.not_after = OffsetDateTime::now_utc()
            + Duration::try_from(after).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        self.node_cert_from(node, &[], p)
    }

    fn node_cert_from(
        &self,
        node: &NodeId,
        hostnames: &[String],
        mut p: CertificateParams,
    ) -> Result<Issued, PkiError> {
        let mut sans = vec![
            uri(format!("{NODE_URN}{node}"))?,
            SanType::DnsName(node.as_str().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for h in hostnames {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.as_str().try_into()?),
            };
            // Named again (a rotation passes every name of the old one): once.
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(p)
    }

    /// An agency signing certificate: `urn:truc:organ:<OrganId>`, digital signature and
    /// non-repudiation (content commitment).
    pub fn agency_cert(&self, organ: &OrganId, name: &str) -> Result<Issued, PkiError> {
        let mut p = params(
            if name.is_empty() {
                organ.as_str()
            } else {
                name
            },
            LEAF_DAYS,
        )?;
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, organ.as_str());
        p.subject_alt_names = vec![uri(format!("{ORGAN_URN}{organ}"))?];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
        self.issue(p)
    }

    /// A signer holding a fresh agency certificate of this CA and its key (tests,
    /// the bench's signature probe).
    pub fn agency_signer(
        &self,
        organ: &OrganId,
        name: &str,
    ) -> Result<crate::sign::Signer, PkiError> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let issued = self.agency_cert(organ, name)?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| PkiError::Key(format!("issued agency key: {e}")))?;
        crate::sign::Signer::from_der(organ, vec![CertificateDer::from(issued.cert_der)], key)
    }

    /// A verifier trusting this CA alone.
    pub fn signature_verifier(&self) -> Result<crate::sign::SignatureVerifier, PkiError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(self.cert_pem().as_bytes())
            .map_err(|e| PkiError::BadCertificate(format!("dev ca: {e}")))?;
        crate::sign::SignatureVerifier::new(&[der])
    }

    /// An operator client certificate, `urn:truc:operator:<name>` with
    /// `urn:truc:role:<role>`. It has client authentication only: no node or
    /// agency identity, so it can neither open a link nor sign a document.
    pub fn operator_cert(&self, name: &str, role: Role) -> Result<Issued, PkiError> {
        let mut p = params(&format!("truc operator {name}"), LEAF_DAYS)?;
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        p.subject_alt_names = vec![
            uri(format!("{OPERATOR_URN}{name}"))?,
            uri(format!("{ROLE_URN}{}", role.as_str()))?,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};

    use super::*;
    use crate::{
        identity::{Identity, cert_info},
        sign::{AgencySigner, SignatureVerifier, VerifyError},
    };

    fn organ(s: &str) -> OrganId {
        s.parse().unwrap()
    }

    fn signer(ca: &DevCa, o: &OrganId) -> AgencySigner {
        ca.agency_signer(o, "Văn phòng Chính phủ").unwrap()
    }

    fn verifier(ca: &DevCa) -> SignatureVerifier {
        ca.signature_verifier().unwrap()
    }

    /// A revocation list file with no list in it is refused: an empty set
    /// would check no revocation at all. DER files, as CAs publish them, load.
    #[test]
    fn a_crl_file_without_a_crl_is_refused_and_der_loads() {
        let ca = DevCa::generate("transport").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = ca.crl(&[vec![1, 2, 3]]).unwrap();
        let path = dir.path().join("ca.crl");
        std::fs::write(&path, &pem).unwrap();
        assert_eq!(crate::load_crls(&path).unwrap().len(), 1);
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        std::fs::write(&path, der.as_ref()).unwrap();
        let loaded = crate::load_crls(&path).unwrap();
        assert_eq!(loaded, vec![der]);
        assert_eq!(
            crate::identity::crl_facts(&loaded[0]).unwrap().revoked,
            vec![vec![1, 2, 3]]
        );
        for not_a_crl in ["", "# the CRL goes here\n", &pem[..pem.len() / 2]] {
            std::fs::write(&path, not_a_crl).unwrap();
            let e = crate::load_crls(&path).unwrap_err().to_string();
            assert!(e.contains("ca.crl"), "{e}");
        }
    }

    #[test]
    fn node_certificates_name_their_node() {
        let ca = DevCa::generate("transport").unwrap();
        let issued = ca.node_cert(&"nghean".parse().unwrap(), &[]).unwrap();
        let info = cert_info(&issued.cert_der).unwrap();
        assert_eq!(info.identity, Identity::Node("nghean".parse().unwrap()));
    }

    #[test]
    fn operator_certificates_carry_their_role_and_no_node_identity() {
        let ca = DevCa::generate("transport").unwrap();
        let admin = ca.operator_cert("admin", Role::Operator).unwrap();
        let viewer = ca.operator_cert("xem", Role::Viewer).unwrap();
        assert_eq!(
            crate::identity::operator(&admin.cert_der).unwrap(),
            ("admin".to_owned(), Role::Operator)
        );
        assert_eq!(
            crate::identity::operator(&viewer.cert_der).unwrap(),
            ("xem".to_owned(), Role::Viewer)
        );
        assert!(crate::identity::node_id(&admin.cert_der).is_err());
        let node = ca.node_cert(&"hub".parse().unwrap(), &[]).unwrap();
        assert!(crate::identity::operator(&node.cert_der).is_err());
        assert!(Role::Operator > Role::Viewer);
    }

    #[test]
    fn signatures_verify_against_the_signing_ca_and_name_the_agency() {
        let ca = DevCa::generate("signing").unwrap();
        let g22 = organ("000.00.00.G22");
        let s = signer(&ca, &g22);
        let sig = s.sign(b"header bytes").unwrap();
        let v = verifier(&ca)
            .verify(
                b"header bytes",
                &sig.bytes,
                sig.algorithm,
                &sig.chain,
                UnixTime::now(),
            )
            .unwrap();
        assert_eq!(v.organ(), Some(&g22));
        assert!(v.subject.contains("Văn phòng Chính phủ") || v.subject.contains("CN="));
    }

    #[test]
    fn one_flipped_byte_anywhere_is_refused() {
        let ca = DevCa::generate("signing").unwrap();
        let s = signer(&ca, &organ("000.00.00.G22"));
        let sig = s.sign(b"header bytes").unwrap();
        let v = verifier(&ca);
        let err = v
            .verify(
                b"header bytez",
                &sig.bytes,
                sig.algorithm,
                &sig.chain,
                UnixTime::now(),
            )
            .unwrap_err();
        assert_eq!(err, VerifyError::BadSignature);
        let mut bad = sig.bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            v.verify(
                b"header bytes",
                &bad,
                sig.algorithm,
                &sig.chain,
                UnixTime::now()
            )
            .is_err()
        );
    }

    /// webpki leaves an end entity's key usage to its caller: an agency's
    /// encryption-only certificate (same name, same CA) signs nothing.
    #[test]
    fn a_certificate_whose_key_usage_is_not_signing_signs_nothing() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let ca = DevCa::generate("signing").unwrap();
        let o = organ("000.00.00.G22");
        let mut p = params("encryption only", LEAF_DAYS).unwrap();
        p.subject_alt_names = vec![uri(format!("{ORGAN_URN}{o}")).unwrap()];
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        let issued = ca.issue(p).unwrap();
        let encryption_only = crate::sign::Signer::from_der(
            &o,
            vec![CertificateDer::from(issued.cert_der)],
            PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let err = signed_and_checked(&ca, &encryption_only).unwrap_err();
        assert!(
            matches!(&err, VerifyError::Untrusted(why) if why.contains("key usage")),
            "{err}"
        );
        // The same agency with a signing certificate is fine.
        assert!(signed_and_checked(&ca, &signer(&ca, &o)).is_ok());
    }

    /// Signs b"header bytes" with `s` and checks it against `ca`.
    fn signed_and_checked(
        ca: &DevCa,
        s: &crate::sign::Signer,
    ) -> Result<crate::sign::Verified, VerifyError> {
        let sig = s.sign(b"header bytes").unwrap();
        verifier(ca).verify(
            b"header bytes",
            &sig.bytes,
            sig.algorithm,
            &sig.chain,
            UnixTime::now(),
        )
    }

    #[test]
    fn a_signer_from_another_ca_is_untrusted() {
        let ca = DevCa::generate("signing").unwrap();
        let rogue = DevCa::generate("rogue").unwrap();
        let s = signer(&rogue, &organ("000.00.00.G22"));
        let sig = s.sign(b"x").unwrap();
        let err = verifier(&ca)
            .verify(b"x", &sig.bytes, sig.algorithm, &sig.chain, UnixTime::now())
            .unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(_)), "{err:?}");
    }

    #[test]
    fn a_signer_refuses_a_certificate_for_another_agency() {
        let ca = DevCa::generate("signing").unwrap();
        let issued = ca.agency_cert(&organ("000.00.00.H41"), "").unwrap();
        let err = AgencySigner::from_der(
            &organ("000.00.00.G22"),
            vec![CertificateDer::from(issued.cert_der)],
            PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("expected agency 000.00.00.G22"),
            "{err}"
        );
    }

    #[test]
    fn expired_signer_certificates_are_refused() {
        let ca = DevCa::generate("signing").unwrap();
        let s = signer(&ca, &organ("000.00.00.G22"));
        let sig = s.sign(b"x").unwrap();
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() + 3600 * 24 * (LEAF_DAYS as u64 + 1),
        ));
        let err = verifier(&ca)
            .verify(b"x", &sig.bytes, sig.algorithm, &sig.chain, later)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::Untrusted(ref r) if r.contains("Expired")),
            "{err:?}"
        );
    }
}
